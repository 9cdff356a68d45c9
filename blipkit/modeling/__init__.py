"""The models: shared layers, the image encoder, BERT, and the BLIP task heads."""
