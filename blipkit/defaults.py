"""The checkpoint each task uses when none is named (kept import-light: the CLI reads it before torch loads)."""

DEFAULT_MODELS = {
    "image-to-text": "Salesforce/blip-image-captioning-base",
    "visual-question-answering": "Salesforce/blip-vqa-base",
    "image-text-matching": "Salesforce/blip-itm-base-coco",
    "zero-shot-image-classification": "Salesforce/blip-itm-base-coco",
}
