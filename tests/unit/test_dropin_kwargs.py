"""The keyword conventions of the Hugging Face model pages' code: torch_dtype, device_map, load_in_8bit, the
pipeline's device numbers and the processors' ``.to(device, dtype)``."""

from __future__ import annotations

import re

import pytest
import torch

import blipkit
import blipkit.devices
from blipkit.devices import available_devices, best_device, check_device, device_from_map
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


# ----------------------------------------------------------------------------------------------- devices
def test_model_device_and_dtype_are_torch_objects(model_dirs):
    model = blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"])
    assert isinstance(model.device, torch.device) and model.device == torch.device("cpu")
    assert isinstance(model.dtype, torch.dtype) and model.dtype == torch.float32


@pytest.mark.parametrize("device_map", ["auto", "cpu", -1, torch.device("cpu"), {"": "cpu"}, {"": -1}])
def test_device_map_places_the_whole_model_on_one_device(model_dirs, device_map):
    model = blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"], device_map=device_map)
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


CPU_ONLY = pytest.mark.skipif(available_devices() != ["cpu"], reason="this machine has an accelerator")


@CPU_ONLY
def test_device_map_auto_picks_the_cpu_where_there_is_no_accelerator():
    assert device_from_map("auto") == best_device() == torch.device("cpu")


@pytest.mark.parametrize(
    ("devices", "best"),
    [(["cpu", "cuda:0", "cuda:1", "mps:0"], "cuda:0"), (["cpu", "mps:0", "xpu:0"], "mps:0"), (["cpu"], "cpu")],
)
def test_device_map_auto_prefers_cuda_then_mps(monkeypatch, devices, best):
    monkeypatch.setattr(blipkit.devices, "available_devices", lambda: devices)
    assert best_device() == torch.device(best)


UNSUPPORTED_MAP = (
    "device_map {!r} is not supported: blipkit places a whole model on one device. Use device_map='auto' (the best "
    "device here), a device ('cuda:0', 0, 'mps', 'cpu') or {{'': device}}"
)


@pytest.mark.parametrize("device_map", ["balanced", "sequential", {"vision_model": "cpu", "text_decoder": "cpu"}])
def test_device_maps_that_split_a_model_are_refused(model_dirs, device_map):
    with pytest.raises(ValueError, match=f"^{re.escape(UNSUPPORTED_MAP.format(device_map))}$"):
        blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"], device_map=device_map)


def test_device_and_device_map_together_are_refused(model_dirs):
    with pytest.raises(ValueError, match=r"^got both device='cpu' and device_map='auto': give one \(device_map is"):
        blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"], device="cpu", device_map="auto")


def test_pipeline_devices_as_the_reference_numbers_them(model_dirs):
    assert check_device(-1) == torch.device("cpu")
    for device in (-1, "cpu"):
        pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"], device=device)
        assert pipe.model.device == torch.device("cpu")
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"], device_map="auto")
    assert pipe.model.device == torch.device("cpu")


@CPU_ONLY
@pytest.mark.parametrize("keywords", [{"device": 0}, {"device": "cuda:0"}, {"device_map": {"": 0}}])
def test_a_gpu_that_is_not_there_is_one_clear_error(model_dirs, keywords):
    shown = "'cuda:0'" if keywords.get("device") == "cuda:0" else "0 (cuda:0)"
    with pytest.raises(ValueError, match=f"^{re.escape(f'device {shown} is not available: this machine has cpu')}$"):
        blipkit.pipeline(
            task="visual-question-answering", model=model_dirs["vqa"], torch_dtype=torch.float16, **keywords
        )


# ----------------------------------------------------------------------------------------------- load_in_8bit
def test_load_in_8bit_is_blipkits_weight_only_int8(model_dirs):
    load = blipkit.BlipForConditionalGeneration.from_pretrained
    eight_bit = load(model_dirs["caption"], load_in_8bit=True, device_map="auto")
    quantized = load(model_dirs["caption"], quantize="int8")
    assert eight_bit._is_quantized
    assert eight_bit.state_dict().keys() == quantized.state_dict().keys()
    for name, tensor in eight_bit.state_dict().items():
        torch.testing.assert_close(tensor, quantized.state_dict()[name], rtol=0, atol=0)
    assert not load(model_dirs["caption"], load_in_8bit=False)._is_quantized


def test_load_in_8bit_with_quantize_is_refused(model_dirs):
    message = "got both quantize='int8' and load_in_8bit=True: give one (load_in_8bit=True is quantize='int8')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"], quantize="int8", load_in_8bit=True)


def test_load_in_4bit_is_refused_naming_what_is_supported(model_dirs):
    message = (
        "load_in_4bit=True is not supported: blipkit quantises weights to int8 only "
        "(load_in_8bit=True or quantize='int8')"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        blipkit.BlipForConditionalGeneration.from_pretrained(model_dirs["caption"], load_in_4bit=True)
