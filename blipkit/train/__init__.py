"""Fine-tuning (``blipkit finetune``): data, objectives, the trainer, checkpoints. Kept import-light: the CLI reads
``TASK_OF`` before torch loads."""

# A fine-tuning task -> the registry task whose model class it trains (blipkit.tasks).
TASK_OF = {"caption": "image-to-text", "vqa": "visual-question-answering", "retrieval": "image-text-matching"}
