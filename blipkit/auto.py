"""The Auto classes transformers maps BLIP and BLIP-2 to: each picks the blipkit class for a checkpoint's family.

``AutoModelForVisualQuestionAnswering.from_pretrained(name_or_path, **kwargs)`` reads the checkpoint's family (its
config.json ``model_type``, or else what its ``architectures`` name) and hands everything to that class's
``from_pretrained``. The tables are transformers 5.24's (``models/auto/*_auto.py``) for the two families, kept as the
reference has them even where the class is an odd fit (its zero-shot classifier for BLIP is ``BlipModel``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from blipkit.hub import ModelFiles
from blipkit.tasks import HUB_OPTIONS, PROCESSORS, checkpoint_model_type


def load_for_family(
    classes: Mapping[str, str], name_or_path: str | os.PathLike | ModelFiles, kwargs: dict[str, Any]
) -> Any:
    """``classes[family].from_pretrained(files, **kwargs)``, the checkpoint's files opened once for both steps."""
    import blipkit

    files = ModelFiles.open(name_or_path, **{k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs})
    return getattr(blipkit, classes[checkpoint_model_type(files)]).from_pretrained(files, **kwargs)


class _AutoClass:
    """One Auto class: a table from the checkpoint's family (config.json ``model_type``) to a blipkit class name."""

    classes: ClassVar[Mapping[str, str]]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | ModelFiles, **kwargs: Any) -> Any:
        """The checkpoint loaded as its family's class; ``kwargs`` (hub settings included) go to that class."""
        return load_for_family(cls.classes, name_or_path, kwargs)


class AutoConfig(_AutoClass):
    classes = {"blip": "BlipConfig", "blip-2": "Blip2Config"}


class AutoProcessor(_AutoClass):
    classes = PROCESSORS


class AutoTokenizer(_AutoClass):
    # The reference names BertTokenizer / GPT2Tokenizer (or a tokenizer_config.json's tokenizer_class); blipkit
    # reads every tokenizer.json with one class, plus BLIP's own that also builds from a vocab.txt.
    classes = {"blip": "BlipTokenizer", "blip-2": "TextTokenizer"}


class AutoImageProcessor(_AutoClass):
    classes = {"blip": "BlipImageProcessor", "blip-2": "BlipImageProcessor"}
    fast_classes = {"blip": "BlipImageProcessorFast", "blip-2": "BlipImageProcessorFast"}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | ModelFiles, use_fast: bool = False, **kwargs: Any
    ) -> Any:
        """``use_fast=True`` takes the batched torch image path, as ``BlipProcessor.from_pretrained`` does."""
        return load_for_family(cls.fast_classes if use_fast else cls.classes, name_or_path, kwargs)


class AutoModel(_AutoClass):
    classes = {"blip": "BlipModel", "blip-2": "Blip2Model"}


class AutoModelForVisualQuestionAnswering(_AutoClass):
    classes = {"blip": "BlipForQuestionAnswering", "blip-2": "Blip2ForConditionalGeneration"}


class AutoModelForImageTextToText(_AutoClass):
    classes = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}


class AutoModelForVision2Seq(AutoModelForImageTextToText):
    """AutoModelForImageTextToText's name before transformers 5 (which removed it), kept for code written then."""


class AutoModelForZeroShotImageClassification(_AutoClass):
    classes = {"blip": "BlipModel", "blip-2": "Blip2ForImageTextRetrieval"}
