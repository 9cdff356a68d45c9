"""LoRA (``blipkit.train.lora``): the model is unchanged at init, only the updates train, merging keeps the outputs
and gives back the reference's modules and keys, and the update equals PEFT's."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import blipkit
from blipkit.modeling.linear import Linear
from blipkit.train.lora import LoRALinear, add_lora, merge_lora
from tests.builders.inputs import blip2_inputs, prompt_inputs, sample_inputs
from tests.builders.models import reference_blip2, reference_blip2_t5
from tests.builders.tolerances import close
from tests.reference import save_reference

OPT_QV = [f"language_model.decoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in "qv"]
T5_QV = [f"language_model.encoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in "qv"] + [
    f"language_model.decoder.layers.{i}.{attn}.{p}"
    for i in (0, 1)
    for attn in ("self_attn", "cross_attn")
    for p in "qv"
]


def blip2_opt(directory):
    reference_blip2(directory)
    inputs = prompt_inputs()
    return blipkit.Blip2ForConditionalGeneration.from_pretrained(directory), inputs, inputs["input_ids"]


def blip2_t5(directory):
    reference_blip2_t5(directory)
    labels = torch.tensor([[5, 9, 1], [8, 1, -100]])
    return blipkit.Blip2ForConditionalGeneration.from_pretrained(directory), blip2_inputs(), labels


def captioner(directory):
    save_reference("BlipForConditionalGeneration", directory)
    inputs = sample_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return blipkit.BlipForConditionalGeneration.from_pretrained(directory), inputs, labels


# (build, targets, the layers they wrap): BLIP-2's defaults, and any of our linear layers by pattern.
CAPTION_TARGETS = ["*.layers.1.mlp.fc1", "text_decoder.head.dense"]
CAPTION_WRAPPED = ["vision_model.layers.1.mlp.fc1", "text_decoder.bert.layers.1.mlp.fc1", "text_decoder.head.dense"]
CASES = {
    "blip2-opt": (blip2_opt, None, OPT_QV),
    "blip2-t5": (blip2_t5, None, T5_QV),
    "blip-caption": (captioner, CAPTION_TARGETS, CAPTION_WRAPPED),
}


def logits(model, inputs, labels):
    model.eval()
    with torch.no_grad():
        return model(**inputs, labels=labels).logits


def train(model, inputs, labels, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("case", CASES)
def test_lora_trains_only_its_updates_and_merges_into_the_weights(tmp_path, case):
    build, targets, expected = CASES[case]
    model, inputs, labels = build(tmp_path / "base")
    before = logits(model, inputs, labels)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    assert add_lora(model, rank=4, alpha=8.0, targets=targets) == expected
    assert torch.equal(logits(model, inputs, labels), before)  # B starts at zero
    assert all(not model.get_submodule(name).weight.requires_grad for name in expected)
    train(model, inputs, labels)
    state = model.state_dict()
    lora = {name for name in state if ".lora_" in name}
    assert lora == {f"{name}.lora_{m}" for name in expected for m in "AB"}
    for name in expected:  # the wrapped layers' own weights did not move; their updates did
        assert torch.equal(state[f"{name}.weight"], weights[f"{name}.weight"])
        assert state[f"{name}.lora_B"].abs().min() > 0
    trained = logits(model, inputs, labels)
    assert not torch.allclose(trained, before)
    # Generation writes some products into reused buffers (out=): the updates must land there too.
    generated = model.generate(**inputs, max_new_tokens=4)

    merge_lora(model)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert all(type(model.get_submodule(name)) is Linear for name in expected)
    assert model.state_dict().keys() == weights.keys()
    close(logits(model, inputs, labels), trained)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4), generated)


def test_merged_checkpoint_loads_in_transformers_with_equal_logits(tmp_path):
    import transformers

    model, inputs, labels = blip2_opt(tmp_path / "base")
    add_lora(model, rank=4)
    train(model, inputs, labels)
    merge_lora(model)
    model.save_pretrained(tmp_path / "merged")

    def keys(directory):
        with safe_open(directory / "model.safetensors", "pt") as f:
            return set(f.keys())

    assert keys(tmp_path / "merged") == keys(tmp_path / "base")
    reference = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        close(logits(model, inputs, labels), reference(**inputs).logits)


def test_the_update_is_peft_lora(tmp_path):
    """Same A and B, same scale alpha / rank: the same loss and the same gradients of A and B as PEFT's LoRA."""
    import peft

    ours, inputs, labels = blip2_opt(tmp_path)
    theirs = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    add_lora(ours, rank=4, alpha=6.0)
    config = peft.LoraConfig(r=4, lora_alpha=6.0, target_modules=OPT_QV)
    theirs = peft.get_peft_model(theirs, config)
    generator = torch.Generator().manual_seed(0)
    for name in OPT_QV:
        layer = ours.get_submodule(name)
        with torch.no_grad():
            layer.lora_B.normal_(generator=generator)
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    losses = []
    for model in (ours, theirs):
        model.train()
        losses.append(model(**inputs, labels=labels).loss)
        losses[-1].backward()
    close(losses[0], losses[1])
    for name in OPT_QV:
        peft_layer = theirs.base_model.model.get_submodule(name)
        close(ours.get_submodule(name).lora_A.grad, peft_layer.lora_A["default"].weight.grad)
        close(ours.get_submodule(name).lora_B.grad, peft_layer.lora_B["default"].weight.grad)


def test_bfloat16_models_keep_float32_updates(tmp_path):
    reference_blip2(tmp_path)
    model = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    add_lora(model, rank=2)
    inputs = prompt_inputs()
    train(model, inputs, inputs["input_ids"], steps=1)
    layer = model.get_submodule(OPT_QV[0])
    assert layer.weight.dtype == torch.bfloat16
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert layer.lora_B.abs().max() > 0
    merge_lora(model)
    assert model.get_submodule(OPT_QV[0]).weight.dtype == torch.bfloat16


def test_errors_name_the_bad_value(tmp_path):
    model, _, _ = blip2_opt(tmp_path)
    with pytest.raises(ValueError, match="^the LoRA rank must be at least 1, got 0$"):
        add_lora(model, rank=0)
    with pytest.raises(ValueError, match=r"^the LoRA dropout must be in \[0, 1\), got 1.0$"):
        add_lora(model, rank=2, dropout=1.0)
    with pytest.raises(ValueError, match="^no linear layer of Blip2ForConditionalGeneration matches \\['q_proj'\\]"):
        add_lora(model, rank=2, targets=["q_proj"])
    with pytest.raises(ValueError, match="^Blip2ForConditionalGeneration has no LoRA layers to merge"):
        merge_lora(model)
    # Called on the language model itself, the defaults wrap the same layers.
    assert add_lora(model.language_model, rank=2) == [name.removeprefix("language_model.") for name in OPT_QV]
    with pytest.raises(ValueError, match=f"^{OPT_QV[0]} already has a LoRA update: merge_lora\\(model\\) first"):
        add_lora(model, rank=2)
