"""The keyword conventions of the Hugging Face model pages' code: torch_dtype, device_map, load_in_8bit, the
pipeline's device numbers and the processors' ``.to(device, dtype)``."""

from __future__ import annotations

import re

import pytest
import torch

import blipkit
import blipkit.devices
from blipkit.devices import available_devices, best_device, check_device, device_from_map
from blipkit.processing.batch import BatchFeature
from tests.bpe import save_bpe_tokenizer
from tests.builders.configs import SAME_WIDTH
from tests.conftest import IMAGES
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


# ----------------------------------------------------------------------------------------------- BatchFeature
@pytest.fixture(scope="module")
def blip2_processor_dir(tmp_path_factory):
    import transformers

    directory = tmp_path_factory.mktemp("blip2-processor")
    tokenizer = transformers.AutoTokenizer.from_pretrained(save_bpe_tokenizer(directory / "bpe"))
    image_processor = transformers.BlipImageProcessorPil(size={"height": 28, "width": 28})
    transformers.Blip2Processor(image_processor, tokenizer, num_query_tokens=4).save_pretrained(directory)
    return directory


def processor_outputs(model_dirs, blip2_processor_dir) -> dict[str, object]:
    blip = blipkit.BlipProcessor.from_pretrained(model_dirs["caption"])
    blip2 = blipkit.Blip2Processor.from_pretrained(blip2_processor_dir)
    fast = blipkit.BlipProcessor.from_pretrained(model_dirs["caption"], use_fast=True)
    image = str(IMAGES[0])
    return {
        "BlipProcessor": blip(images=image, text="a dog", return_tensors="pt"),
        "Blip2Processor": blip2(images=image, text="a dog", return_tensors="pt"),
        "Blip2Processor text only": blip2(text=["a dog", "two"], padding=True),
        "BlipImageProcessor": blip.image_processor(image, return_tensors="pt"),
        "BlipImageProcessor lists": blip.image_processor(image, return_tensors=None),
        "BlipImageProcessorFast": fast.image_processor(image),
        "BlipTokenizer": blip.tokenizer(["a dog", "a cat on a mat"], padding=True, return_tensors="pt"),
        "TextTokenizer": blip2.tokenizer("a dog"),
    }


def test_processors_image_processors_and_tokenizers_return_batch_features(model_dirs, blip2_processor_dir):
    for name, inputs in processor_outputs(model_dirs, blip2_processor_dir).items():
        assert isinstance(inputs, BatchFeature) and isinstance(inputs, dict), name
        key = next(iter(inputs))
        assert getattr(inputs, key) is inputs[key] and dict(**inputs).keys() == inputs.keys(), name


def test_model_page_flow_in_half_precision(model_dirs):
    processor = blipkit.BlipProcessor.from_pretrained(model_dirs["vqa"])
    model = blipkit.BlipForQuestionAnswering.from_pretrained(
        model_dirs["vqa"], torch_dtype=torch.float16, device_map="auto"
    )
    inputs = processor(images=str(IMAGES[0]), text="what is it?", return_tensors="pt").to(model.device, torch.float16)
    assert inputs["pixel_values"].dtype == torch.float16 and inputs["input_ids"].dtype == torch.long
    assert model.generate(**inputs, max_new_tokens=3).dtype == torch.long


TO_CALLS = [
    (("cpu",), {}),
    ((torch.device("cpu"),), {}),
    ((torch.float16,), {}),
    (("cpu", torch.bfloat16), {}),
    ((), {"device": "cpu", "dtype": torch.float64}),
    ((), {"dtype": torch.float16}),
]


@pytest.mark.parametrize(("args", "kwargs"), TO_CALLS)
def test_to_casts_floating_tensors_only_as_the_references_batch_feature(args, kwargs):
    import transformers

    def inputs():
        return {
            "pixel_values": torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
            "input_ids": torch.tensor([[101, 7, 102], [101, 8, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
            "text": ["not", "a tensor"],
        }

    ours, reference = BatchFeature(inputs()), transformers.BatchFeature(inputs())
    assert ours.to(*args, **kwargs) is ours
    assert reference.to(*args, **kwargs) is reference
    assert ours.keys() == reference.keys()
    for key, value in ours.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == reference[key].dtype and value.device == reference[key].device, key
            torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
        else:
            assert value == reference[key]


def test_to_errors_name_the_bad_value():
    inputs = BatchFeature(pixel_values=torch.zeros(1, 3, 4, 4))
    with pytest.raises(
        ValueError, match=r"^BatchFeature.to takes a device and a dtype, at most one of each; got 'cpu'$"
    ):
        inputs.to("cpu", "cpu")
    with pytest.raises(
        ValueError, match=r"^BatchFeature.to takes a device and a dtype, at most one of each; got \[1\]$"
    ):
        inputs.to([1])
    with pytest.raises(AttributeError, match=r"^BatchFeature has no 'input_ids': it holds pixel_values$"):
        inputs.input_ids  # noqa: B018 - the attribute access is what is tested


@CPU_ONLY
def test_to_an_absent_gpu_is_the_device_check_error():
    inputs = BatchFeature(pixel_values=torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"^device 0 \(cuda:0\) is not available: this machine has cpu$"):
        inputs.to(0, torch.float16)
    with pytest.raises(ValueError, match=r"^device 'cuda' is not available: this machine has cpu$"):
        inputs.to("cuda", torch.float16)
