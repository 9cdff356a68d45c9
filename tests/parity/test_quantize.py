"""``quantize="int8"``: a quantised model computes exactly what its dequantised weights say, stays within a few
percent of float32, holds int8 weights, lets go of the checkpoint file, and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blipkit
from blipkit.modeling import linear
from blipkit.modeling.linear import Linear
from blipkit.modeling.quantize import Int8Linear, quantize_rows
from tests.builders.inputs import encoder_inputs
from tests.builders.models import reference_t5, saved_blip2
from tests.reference import IMAGE_SIZE, save_reference


def test_quantize_rows_round_trip():
    weight = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    weight[2] = 0.0
    quantized, scale = quantize_rows(weight.bfloat16())
    assert quantized.dtype == torch.int8 and scale.dtype == torch.float32
    peaks = quantized.abs().amax(1)
    assert peaks[2] == 0 and (peaks[[0, 1, 3, 4, 5]] == 127).all()  # every non-zero row uses the full range
    error = (quantized.float() * scale[:, None] - weight.bfloat16().float()).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()
    original = weight.clone()
    quantize_rows(weight)  # a float32 weight is read, never divided in place
    assert torch.equal(weight, original)


def test_quantize_rows_rejects_what_it_cannot_quantise():
    with pytest.raises(ValueError, match="can only quantise a 2-d floating-point weight, got 1-d torch.float32"):
        quantize_rows(torch.ones(3))


@pytest.mark.parametrize("native_bf16", [False, True], ids=["slow-bf16-cpu", "native-bf16-cpu"])
@pytest.mark.parametrize("rows", [1, 3, 8, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_in_every_form_is_the_dequantised_product(monkeypatch, rows, dtype, native_bf16):
    # 1 and 3 rows: the int8 kernel; 8 and 40: slices in float32, or in bf16 where the CPU computes bf16 natively
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", not native_bf16)
    if native_bf16:  # bf16 slices, whatever this CPU measures
        monkeypatch.setattr(linear, "upcast_min_rows", lambda t, weight_dtype=None: None)
    monkeypatch.setattr(linear, "INT8_KERNEL_MAX_ROWS", 3)
    monkeypatch.setattr(linear, "TRANSPOSED_MAX_ROWS", 10)
    monkeypatch.setattr(linear, "UPCAST_BUFFER_ELEMENTS", 100)
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 64, generator=generator).to(dtype)
    weight, bias = torch.randn(48, 64, generator=generator), torch.randn(48, generator=generator).to(dtype)
    quantized, scale = quantize_rows(weight)
    out = linear.linear(x, quantized, bias, scale=scale)
    truth = F.linear(x.double(), quantized.double() * scale.double()[:, None], bias.double())
    assert out.dtype == dtype and out.shape == (rows, 48)
    # Few rows run with bf16 activations (the int8 kernel's fast type); many rows in float32 for float32 inputs.
    tolerance = 1e-5 if dtype == torch.float32 and rows > 3 else 2**-7
    torch.testing.assert_close(out.double(), truth, rtol=tolerance, atol=tolerance * truth.abs().max().item())


def dequantised_twin(quantized_model, float_model):
    """``float_model`` with every layer ``quantized_model`` quantised replaced by its dequantised weight."""
    for name, module in quantized_model.named_modules():
        if isinstance(module, Int8Linear):  # a new parameter: the float weight may be shared (a tied LM head)
            float_model.get_submodule(name).weight = torch.nn.Parameter(module.dequantized_weight())
    return float_model


def relative_error(output, truth):
    return ((output.float() - truth).abs().max() / truth.abs().max()).item()


def check_quantised(model_class, directory, inputs, truth, output=lambda out: out.logits):
    """A quantised load equals its dequantised float twin (to float32 rounding) and is within 5% of float32."""
    quantized = model_class.from_pretrained(directory, quantize="int8")
    assert not any(type(m) is Linear for m in quantized.modules())
    assert quantized.dtype == torch.float32  # the float parameters' dtype, not the int8 weights'
    twin = dequantised_twin(quantized, model_class.from_pretrained(directory))
    with torch.no_grad():
        out = output(quantized(**inputs))
        torch.testing.assert_close(out, output(twin(**inputs)), atol=1e-4, rtol=1e-4)
    assert relative_error(out, truth) < 0.05
    return quantized


@torch.no_grad()
def test_blip_caption_int8(tmp_path):
    save_reference("BlipForConditionalGeneration", tmp_path)
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[30522, 1037, 3861, 1997, 102], [30522, 1037, 4937, 102, 0]])
    inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": (ids != 0).long()}
    truth = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)(**inputs).logits
    quantized = check_quantised(blipkit.BlipForConditionalGeneration, tmp_path, inputs, truth)
    assert quantized.generate(pixels, max_new_tokens=4, num_beams=2).shape == (2, 5)  # cached decoding runs
    bf16 = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path, dtype="bfloat16", quantize="int8")
    assert relative_error(bf16(**inputs | {"pixel_values": pixels.bfloat16()}).logits, truth) < 0.05


@pytest.mark.parametrize("language_model", ["opt", "t5"])
@torch.no_grad()
def test_blip2_int8(tmp_path, language_model):
    inputs = saved_blip2(tmp_path, language_model)
    model_class = blipkit.Blip2ForConditionalGeneration
    truth = model_class.from_pretrained(tmp_path)(**inputs).logits
    quantized = check_quantised(model_class, tmp_path, inputs, truth)
    run = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    assert quantized.generate(**run, max_new_tokens=3).shape[0] == 2


@torch.no_grad()
def test_t5_head_tied_to_the_embeddings_is_quantised_on_its_own(tmp_path):
    reference_t5(tmp_path)  # T5 v1.0: the checkpoint has no lm_head.weight; it is the embeddings
    inputs = {**encoder_inputs(), "decoder_input_ids": torch.tensor([[0, 5, 9], [0, 8, 2]])}
    model_class = blipkit.T5ForConditionalGeneration
    truth = model_class.from_pretrained(tmp_path)(**inputs).logits
    quantized = check_quantised(model_class, tmp_path, inputs, truth)
    assert isinstance(quantized.lm_head, Int8Linear)
    assert quantized.shared.weight.dtype == torch.float32  # the embeddings themselves stay float


def test_missing_weights_of_quantised_layers_are_initialised(tmp_path):
    from safetensors.torch import load_file, save_file

    save_reference("BlipForConditionalGeneration", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = "text_decoder.bert.encoder.layer.0.attention.self.query"
    del state[f"{key}.weight"], state[f"{key}.bias"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path, strict=False, quantize="int8")
    layer = model.text_decoder.bert.layers[0].self_attn.q
    assert isinstance(layer, Int8Linear) and not layer.weight.is_meta and layer.weight.abs().max() == 127
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))  # as the reference initialises a bias


def test_quantised_model_lets_go_of_the_checkpoint_file(tmp_path):
    """Its float tensors are copies: with them viewing the mapped file, the int8 model would keep every float
    weight it read resident too. (An unquantised load does view the file, which is what makes it fast.)"""
    save_reference("BlipForConditionalGeneration", tmp_path)
    path = tmp_path / "model.safetensors"
    quantized = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path, quantize="int8")
    mapped = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
    before = quantized.text_decoder.bert.embeddings.word_embeddings.weight.clone()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # rewrite the file in place: views of a private mapping see untouched pages
        f.seek(size // 2)
        f.write(bytes(size - size // 2))
    assert torch.equal(quantized.text_decoder.bert.embeddings.word_embeddings.weight, before)
    assert not torch.equal(mapped.text_decoder.bert.embeddings.word_embeddings.weight, before)


def test_quantised_model_cannot_be_saved(tmp_path):
    save_reference("BlipForConditionalGeneration", tmp_path / "source")
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "source", quantize="int8")
    with pytest.raises(ValueError, match="loaded with quantize='int8' and cannot be saved"):
        model.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_unknown_quantize_method_is_named(tmp_path):
    save_reference("BlipForConditionalGeneration", tmp_path)
    with pytest.raises(ValueError, match=r"unknown quantize method 'int4'; expected one of \['int8'\]"):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path, quantize="int4")


def test_int8_linear_quantises_what_the_loader_hands_it():
    layer = Int8Linear(50, 6, bias=True)
    weight = torch.nn.Parameter(torch.randn(6, 50, generator=torch.Generator().manual_seed(0)))  # as a tied weight
    layer.load_weight("weight", weight)
    layer.load_weight("bias", torch.ones(6))
    quantized, scale = quantize_rows(weight.detach())
    assert torch.equal(layer.weight, quantized) and torch.equal(layer.weight_scale, scale)
    assert not layer.weight.requires_grad and torch.equal(layer.bias, torch.ones(6))
