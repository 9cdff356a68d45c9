"""The keyword conventions of the Hugging Face model pages' code: torch_dtype, device_map, load_in_8bit, the
pipeline's device numbers and the processors' ``.to(device, dtype)``."""

from __future__ import annotations

import re

import pytest
import torch

import blipkit
from tests.parity.test_checkpoints import SAME_WIDTH
from tests.reference import save_reference


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("caption", "vqa")}
    save_reference("BlipForConditionalGeneration", dirs["caption"])
    save_reference("BlipForQuestionAnswering", dirs["vqa"], **SAME_WIDTH)
    return dirs


# ----------------------------------------------------------------------------------------------- torch_dtype
@pytest.mark.parametrize("name", ["BlipForConditionalGeneration", "BlipVisionModel"])
def test_torch_dtype_is_dtype(model_dirs, name):
    model = getattr(blipkit, name).from_pretrained(model_dirs["caption"], torch_dtype=torch.float16, strict=False)
    assert model.dtype == torch.float16 and isinstance(model.dtype, torch.dtype)
    auto = getattr(blipkit, name).from_pretrained(model_dirs["caption"], torch_dtype="auto", strict=False)
    assert auto.dtype == torch.float32


def test_dtype_and_torch_dtype_together_are_refused(model_dirs):
    message = (
        "got both dtype=torch.bfloat16 and torch_dtype=torch.float16: give one (torch_dtype is dtype's other name)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        blipkit.BlipForConditionalGeneration.from_pretrained(
            model_dirs["caption"], dtype=torch.bfloat16, torch_dtype=torch.float16
        )
    with pytest.raises(ValueError, match="got both dtype="):
        blipkit.pipeline("image-to-text", model=model_dirs["caption"], dtype="float32", torch_dtype=torch.float16)


def test_pipeline_takes_torch_dtype(model_dirs):
    pipe = blipkit.pipeline("visual-question-answering", model=model_dirs["vqa"], torch_dtype=torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16
