"""``linear`` gives F.linear's result in every form it picks (transposed, upcast in slices, both, neither)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipkit.modeling import linear


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", True)
    monkeypatch.setattr(linear, "UPCAST_BUFFER_ELEMENTS", 100)  # several slices per weight, and a ragged last one


@pytest.mark.parametrize("rows", [1, 3, 8, 40])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("into_buffer", [False, True])
def test_every_form_matches_f_linear(monkeypatch, rows, with_bias, dtype, into_buffer):
    monkeypatch.setattr(linear, "UPCAST_MIN_ROWS", 2)
    monkeypatch.setattr(linear, "TRANSPOSED_MAX_ROWS", 10)
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 2, 23, generator=generator).to(dtype)  # 3-d input: rows are the leading dimensions
    weight = torch.randn(37, 23, generator=generator).to(dtype)
    bias = torch.randn(37, generator=generator).to(dtype) if with_bias else None
    buffer = torch.full((rows, 2, 37), float("nan"), dtype=dtype) if into_buffer else None
    out = linear.linear(x, weight, bias, out=buffer)
    if into_buffer:
        assert out is buffer
    truth = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert out.shape == (rows, 2, 37) and out.dtype == dtype and out.is_contiguous()
    # bf16 results are rounded once at the end (float32 inside), so they are as close as bf16 can be
    tolerance = 1e-5 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(out.double(), truth, rtol=tolerance, atol=tolerance * truth.abs().max().item())


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("int8", [False, True])
def test_a_float32_buffer_takes_bf16_products_unrounded(monkeypatch, with_bias, int8):
    """Products of bf16 computed in float32 go straight into a float32 buffer's columns, a weight slice at a time,
    unrounded (the ViT's q|k|v and MLP hidden states), scaled for int8 weights, every column written."""
    monkeypatch.setattr(linear, "UPCAST_MIN_ROWS", 2)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 64, generator=generator).bfloat16()
    weight = torch.randn(37, 64, generator=generator).bfloat16()
    scale = torch.rand(37, generator=generator) + 0.5 if int8 else None
    if int8:
        weight = torch.randint(-127, 128, (37, 64), generator=generator, dtype=torch.int8)
    bias = torch.randn(37, generator=generator).bfloat16() if with_bias else None
    buffer = torch.full((3, 40, 37), float("nan"))
    assert linear.linear(x, weight, bias, scale, out=buffer) is buffer
    effective = weight.double() * (1 if scale is None else scale.double()[:, None])
    truth = F.linear(x.double(), effective, None if bias is None else bias.double())
    torch.testing.assert_close(buffer.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())


def test_few_bf16_rows_stay_in_bf16(monkeypatch):
    """Below UPCAST_MIN_ROWS rows a bf16 product is the plain bf16 one (reading half the bytes wins)."""
    x = torch.randn(3, 64).bfloat16()
    weight = torch.randn(48, 64).bfloat16()
    assert torch.equal(linear.linear(x, weight), F.linear(x, weight))


@pytest.mark.parametrize("with_bias", [True, False])
def test_writing_into_a_buffer_gives_f_linears_bits(with_bias):
    """The many-row float32 product written into a buffer is the very computation F.linear makes."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 96, generator=generator)
    weight = torch.randn(200, 96, generator=generator)
    bias = torch.randn(200, generator=generator) if with_bias else None
    buffer = torch.empty(4, 50, 200)
    assert torch.equal(linear.linear(x, weight, bias, out=buffer), F.linear(x, weight, bias))


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("into_buffer", [False, True])
def test_gradients_flow_through_every_form(monkeypatch, rows, into_buffer):
    """Training a bf16 model on a CPU without bf16 instructions: the float32 slices and out= buffers used for
    inference are not recordable by autograd, so tracked products take a differentiable float32 form."""
    monkeypatch.setattr(linear, "UPCAST_MIN_ROWS", 8)
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 23, generator=generator).bfloat16().requires_grad_()
    weight = torch.randn(37, 23, generator=generator).bfloat16().requires_grad_()
    bias = torch.randn(37, generator=generator).bfloat16().requires_grad_()
    buffer = torch.empty(rows, 37, dtype=torch.bfloat16) if into_buffer else None
    out = linear.linear(x, weight, bias, out=buffer)
    out.float().square().sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    F.linear(x64, w64, b64).square().sum().backward()
    assert out.dtype == torch.bfloat16 and (out is buffer) == into_buffer
    for got, truth in ((x.grad, x64.grad), (weight.grad, w64.grad), (bias.grad, b64.grad)):
        torch.testing.assert_close(got.double(), truth, rtol=2**-7, atol=2**-7 * truth.abs().max().item())


def test_int8_weights_pass_gradients_to_their_inputs():
    weight = torch.randint(-127, 128, (64, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    scale = torch.rand(64, generator=torch.Generator().manual_seed(1)) / 100
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    linear.linear(x, weight, scale=scale).sum().backward()
    torch.testing.assert_close(x.grad, (weight.float() * scale[:, None]).sum(0).expand(4, -1))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_autocast_gives_what_f_linear_gives(requires_grad):
    """Mixed-precision training: F.linear's bf16 result under autocast, not a float32 copy of it (twice the memory
    traffic for every later op)."""
    x = torch.randn(2, 600, 64, requires_grad=requires_grad)
    weight, bias = torch.randn(96, 64, requires_grad=requires_grad), torch.randn(96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = linear.linear(x, weight, bias), F.linear(x, weight, bias)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
