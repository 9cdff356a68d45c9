"""Search a collection of images (or texts) by text or by image: ``index.Index`` over a LanceDB store, ITM re-ranking.

Kept empty of imports, so that the ``blipkit`` command's parser loads ``index.commands`` without torch.
"""
