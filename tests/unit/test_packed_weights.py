"""The bf16 linear weights of a decoder, packed by oneDNN as they load (``linear.packed``): the same numbers as dense
ones, saved dense, unpacked for training; the image encoder's stay dense."""

from __future__ import annotations

import types

import pytest
import torch

import blipkit
from blipkit.modeling import cpu, linear
from blipkit.modeling.linear import PACKED_WEIGHTS_VARIABLE, Linear, pack_linears, packs_weights, unpack_linears

pytestmark = pytest.mark.skipif(
    not cpu.has_native_bf16(cpu.detect()) or not torch.backends.mkldnn.is_available(),
    reason="oneDNN packs bf16 weights on CPUs with native bf16 only",
)


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory):
    from tests.reference import save_reference

    directory = tmp_path_factory.mktemp("packed") / "caption"
    save_reference("BlipForConditionalGeneration", directory)
    return directory


def load(directory, packed: bool):
    model = blipkit.BlipForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16, pack_weights=True)
    if not packed:
        unpack_linears(model)
    return model


def packed_count(model) -> int:
    return sum(1 for p in model.parameters() if p.is_mkldnn)


def test_bf16_decoders_load_packed_when_asked_and_float32_ones_dense(caption_dir, monkeypatch):
    monkeypatch.delenv(PACKED_WEIGHTS_VARIABLE, raising=False)
    assert packs_weights(torch.bfloat16, torch.device("cpu"), default=True)
    assert not packs_weights(torch.float32, torch.device("cpu"), default=True)
    model = load(caption_dir, packed=True)
    packed_names = {name for name, p in model.named_parameters() if p.is_mkldnn}
    decoder_linears = {
        f"{name}.weight" for name, module in model.named_modules() if name.startswith("text_decoder.")
        and type(module) is Linear and module.weight is not model.text_decoder.bert.embeddings.word_embeddings.weight
    }  # fmt: skip
    assert packed_names == decoder_linears and len(packed_names) > 0  # the image encoder's products have many rows
    caption = blipkit.BlipForConditionalGeneration
    assert packed_count(caption.from_pretrained(caption_dir, pack_weights=True)) == 0  # float32
    assert packed_count(caption.from_pretrained(caption_dir, dtype=torch.bfloat16)) == 0  # the library's default
    monkeypatch.setenv(PACKED_WEIGHTS_VARIABLE, "0")  # the environment overrides the caller
    assert packed_count(load(caption_dir, packed=True)) == 0
    monkeypatch.setenv(PACKED_WEIGHTS_VARIABLE, "1")
    assert packed_count(caption.from_pretrained(caption_dir, dtype=torch.bfloat16)) == len(packed_names)
    monkeypatch.setenv(PACKED_WEIGHTS_VARIABLE, "yes")
    with pytest.raises(ValueError, match=r"BLIPKIT_PACKED_WEIGHTS='yes': give 1 \(pack\) or 0 \(do not\)"):
        load(caption_dir, packed=True)


def test_serve_and_jobs_ask_for_packed_weights(caption_dir, monkeypatch):
    from blipkit.jobs.workers import Worker
    from blipkit.serve.models import load_model

    monkeypatch.delenv(PACKED_WEIGHTS_VARIABLE, raising=False)
    served = load_model(caption_dir, dtype=torch.bfloat16)
    assert packed_count(next(iter(served.tasks.values())).model) > 0
    calls = []

    def loading(*args, **kwargs):
        calls.append(kwargs)
        raise InterruptedError  # what the worker does with the model is not this test's business

    monkeypatch.setattr("blipkit.jobs.workers.load", loading)
    with pytest.raises(InterruptedError):
        Worker(types.SimpleNamespace(runs=None, model=None, dtype=None, device=None, quantize=None))
    assert calls == [{"dtype": None, "device": None, "quantize": None, "pack_weights": True}]


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}], ids=["greedy", "beams"])
def test_packed_weights_give_the_dense_weights_numbers(caption_dir, settings):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[30522, 1037, 3861, 102]] * 2)
    packed, dense = load(caption_dir, packed=True), load(caption_dir, packed=False)
    assert packed_count(dense) == 0
    assert torch.equal(packed(pixels, input_ids=ids).logits, dense(pixels, input_ids=ids).logits)
    assert torch.equal(packed.generate(pixels, **settings), dense.generate(pixels, **settings))


def test_a_packed_model_saves_dense_weights_that_reload_equal(caption_dir, tmp_path):
    packed = load(caption_dir, packed=True)
    packed.save_pretrained(tmp_path / "saved")
    dense = load(caption_dir, packed=False)
    reloaded = load(tmp_path / "saved", packed=False)
    for (name, a), (_, b) in zip(dense.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_training_unpacks_and_packing_skips_shared_weights(caption_dir):
    model = load(caption_dir, packed=True)
    model.train()
    assert packed_count(model) == 0 and all(p.requires_grad for p in model.parameters())
    model.eval()
    shared = model.text_decoder.bert.layers[0].self_attn.q
    model.text_decoder.bert.layers[1].self_attn.q.weight = shared.weight  # a tie
    pack_linears(model)
    assert not shared.weight.is_mkldnn and packed_count(model) > 0


def test_many_row_products_with_packed_weights_take_the_calibrated_float32_form(monkeypatch):
    """Where float32 products measured faster from some row count, a packed weight gives a dense one's float32 bits."""
    monkeypatch.setattr(linear, "upcast_min_rows", lambda t, weight_dtype=None: 16)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator).bfloat16()
    bias = torch.randn(96, generator=generator).bfloat16()
    packed_weight = linear.packed(weight)
    for rows, compute in ((3, None), (40, torch.float32)):
        x = torch.randn(rows, 64, generator=generator).bfloat16()
        assert linear.choose_form(x, packed_weight) == linear.Form("packed", compute)
        assert torch.equal(linear.linear(x, packed_weight, bias), linear.linear(x, weight, bias))
