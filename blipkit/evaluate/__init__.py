"""Benchmarks of the published kind: ``blipkit eval retrieval`` (R@1/5/10 on Karpathy-split COCO or Flickr30k)."""
