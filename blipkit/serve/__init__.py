"""``blipkit serve``: BLIP and BLIP-2 behind HTTP, with dynamic batching (install the ``serve`` extra)."""
