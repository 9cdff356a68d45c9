"""Search a collection of images (or texts) by text or by image: ``Index`` over a LanceDB store, ITM re-ranking."""

from blipkit.index.index import AddSummary, Index

__all__ = ["AddSummary", "Index"]
