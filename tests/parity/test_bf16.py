"""bfloat16: blipkit's bf16 output is as close to the float32 truth as the reference's bf16 output is.

On CPUs without bf16 matrix instructions blipkit multiplies many-row products in float32 (see
``linear.UPCAST_MIN_ROWS``); both that path and the plain bf16 path are checked, whatever this machine has.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blipkit
from blipkit.modeling import linear
from blipkit.modeling.layers import Attention, attention_ready
from blipkit.modeling.vision import VisionEmbeddings
from tests.builders.models import saved_blip2
from tests.reference import IMAGE_SIZE, save_reference


@pytest.fixture(params=["upcast", "upcast-untransposed", "native", "native-upcast"])
def matmul_path(request, monkeypatch):
    # "native": as on a CPU with bf16 instructions, where every product, the patch convolution and the image's
    # keys and values stay in bf16; "native-upcast": such a CPU whose calibration found float32 products faster.
    native = request.param.startswith("native")
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", not native)
    monkeypatch.setattr(linear, "UPCAST_MIN_ROWS", 1)
    if native:
        calibrated = 1 if request.param == "native-upcast" else None
        monkeypatch.setattr(linear, "upcast_min_rows", lambda t, weight_dtype=None: calibrated)
    if request.param == "upcast-untransposed":  # every product in the many-rows form
        monkeypatch.setattr(linear, "TRANSPOSED_MAX_ROWS", 1)
    monkeypatch.setattr(linear, "UPCAST_BUFFER_ELEMENTS", 300)  # several slices per weight
    return request.param


def assert_as_accurate(ours_bf16, reference_bf16, truth):
    """Our error against float32 is on average within 1.5x the reference's, and at its worst within 2x (one
    logit of a tiny random model can sit on a rounding edge either way), and never more than bf16 noise."""
    ours_error = (ours_bf16.float() - truth).abs()
    reference_error = (reference_bf16.float() - truth).abs()
    assert ours_error.mean() <= 1.5 * reference_error.mean() + 1e-4 * truth.abs().max(), (ours_error, reference_error)
    assert ours_error.max() <= 2 * reference_error.max() + 1e-3 * truth.abs().max(), (ours_error, reference_error)
    assert ours_error.max() < 0.05 * truth.abs().max()


@torch.no_grad()
def test_blip_caption_logits_in_bf16(tmp_path, matmul_path):
    import transformers

    save_reference("BlipForConditionalGeneration", tmp_path)
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[30522, 1037, 3861, 1997, 102], [30522, 1037, 4937, 102, 0]])
    mask = (ids != 0).long()
    outputs = {}
    for name, load in (
        ("ours", blipkit.BlipForConditionalGeneration),
        ("ref", transformers.BlipForConditionalGeneration),
    ):
        for dtype in (torch.float32, torch.bfloat16):
            model = load.from_pretrained(tmp_path, dtype=dtype).eval()
            outputs[name, dtype] = model(pixel_values=pixels.to(dtype), input_ids=ids, attention_mask=mask).logits
    assert outputs["ours", torch.bfloat16].dtype == torch.bfloat16
    assert_as_accurate(outputs["ours", torch.bfloat16], outputs["ref", torch.bfloat16], outputs["ref", torch.float32])
    ours = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours.generate(pixels.to(torch.bfloat16), max_new_tokens=4).shape == (2, 5)  # cached decoding runs


@pytest.mark.parametrize("language_model", ["opt", "t5"])
@torch.no_grad()
def test_blip2_logits_in_bf16(tmp_path, matmul_path, language_model):
    import transformers

    inputs = saved_blip2(tmp_path, language_model)
    outputs = {}
    for name, load in (("ours", blipkit), ("ref", transformers)):
        for dtype in (torch.float32, torch.bfloat16):
            model = load.Blip2ForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype).eval()
            run = {**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}
            outputs[name, dtype] = model(**run).logits
    real = slice(None) if language_model == "t5" else inputs["attention_mask"].bool()
    assert_as_accurate(
        outputs["ours", torch.bfloat16][real], outputs["ref", torch.bfloat16][real], outputs["ref", torch.float32][real]
    )
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    run = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    assert ours.generate(**run | {"pixel_values": run["pixel_values"].bfloat16()}, max_new_tokens=3).shape[0] == 2


@pytest.mark.parametrize("slow", [True, False])
def test_patch_embedding_in_float32_where_bf16_is_slow(monkeypatch, slow):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", slow)
    config = blipkit.BlipVisionConfig(hidden_size=32, patch_size=4, image_size=16)
    embeddings = VisionEmbeddings(config).to(torch.bfloat16)
    torch.nn.init.normal_(embeddings.patch_embedding.weight)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    conv = embeddings.patch_embedding
    expected = F.conv2d(pixels.float(), conv.weight.float(), conv.bias.float(), stride=4)
    computed_in = []
    monkeypatch.setattr(F, "conv2d", lambda x, *_, **__: computed_in.append(x.dtype) or expected.to(x.dtype))
    assert torch.equal(embeddings.embed_patches(pixels), expected.to(torch.bfloat16))
    assert computed_in == [torch.float32 if slow else torch.bfloat16]


@pytest.mark.parametrize("slow", [True, False])
def test_decoder_keys_and_values_over_the_image_are_projected_straight_to_float32_where_bf16_is_slow(monkeypatch, slow):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", slow)
    generator = torch.Generator().manual_seed(0)
    attention = Attention(32, 4, kv_dim=48).to(torch.bfloat16)
    for param in attention.parameters():
        param.data = torch.randn(param.shape, generator=generator).to(torch.bfloat16)
    image = torch.randn(2, 17, 48, generator=generator).to(torch.bfloat16)
    keys, values = attention_ready(attention, image)
    for got, proj in ((keys, attention.k), (values, attention.v)):
        exact = F.linear(image.float(), proj.weight.float(), proj.bias.float()).unflatten(-1, (4, 8)).transpose(1, 2)
        if slow:  # float32 from float32 products: not rounded to bf16 on the way
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-4)
            assert not torch.equal(got, exact.bfloat16().float())
        else:
            assert got.dtype == torch.bfloat16
