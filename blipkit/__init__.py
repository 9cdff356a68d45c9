"""blipkit: fast, dependency-light BLIP and BLIP-2 for Python.

Public names are imported lazily, on first use, so that ``import blipkit`` stays cheap.
"""

from __future__ import annotations

from blipkit._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "blipkit.configs": (
        "BlipConfig",
        "BlipTextConfig",
        "BlipVisionConfig",
        "Blip2QFormerConfig",
        "Blip2VisionConfig",
        "Blip2Config",
        "ConfigError",
        "OPTConfig",
        "T5Config",
    ),
    "blipkit.modeling.opt": ("OPTForCausalLM",),
    "blipkit.modeling.t5": ("T5ForConditionalGeneration",),
    "blipkit.modeling.blip2": (
        "Blip2ForConditionalGeneration",
        "Blip2ForImageTextRetrieval",
        "Blip2Model",
        "Blip2TextModelWithProjection",
        "Blip2VisionModelWithProjection",
    ),
    "blipkit.modeling.vision": ("BlipVisionModel", "Blip2VisionModel"),
    "blipkit.modeling.qformer": ("Blip2QFormerModel",),
    "blipkit.modeling.bert": ("BlipTextModel", "BlipTextLMHeadModel"),
    "blipkit.modeling.blip": (
        "BlipModel",
        "BlipForConditionalGeneration",
        "BlipForQuestionAnswering",
        "BlipForImageTextRetrieval",
    ),
    "blipkit.processing.image": ("BlipImageProcessor", "BlipImageProcessorFast", "ImageError", "load_image"),
    "blipkit.processing.text": ("BlipTokenizer", "TextTokenizer"),
    "blipkit.processing.processors": ("BlipProcessor", "Blip2Processor"),
    "blipkit.processing.batch": ("BatchFeature",),
    "blipkit.pipelines": ("pipeline",),
    "blipkit.index.index": ("AddSummary", "Index"),
    "blipkit.generation.config": ("GenerationConfig",),
    "blipkit.checkpoint": ("CheckpointError",),
    "blipkit.hub": ("ModelFiles", "ModelNotFoundError"),
    "blipkit.auto": (
        "AutoConfig",
        "AutoImageProcessor",
        "AutoModel",
        "AutoModelForImageTextToText",
        "AutoModelForVision2Seq",
        "AutoModelForVisualQuestionAnswering",
        "AutoModelForZeroShotImageClassification",
        "AutoProcessor",
        "AutoTokenizer",
    ),
}
__getattr__, __all__ = lazy_exports("blipkit", _EXPORTS, globals())
