"""Gradient checkpointing: the same loss and gradients, fewer bytes kept for backward, every transformer layer of
every stack recomputed in training and only there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

import blipkit
from tests.builders.inputs import blip2_inputs, prompt_inputs, sample_inputs
from tests.builders.models import reference_blip2, reference_blip2_t5
from tests.reference import TINY_BLIP, save_reference

LAYER = re.compile(r"layers\.\d+$")


def captioner(directory):
    # Dropout on: checkpointing must replay the same dropout masks when it recomputes a layer.
    text_config = {**TINY_BLIP["text_config"], "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    save_reference("BlipForConditionalGeneration", directory, text_config=text_config)
    inputs = sample_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return blipkit.BlipForConditionalGeneration.from_pretrained(directory), {**inputs, "labels": labels}


def blip2_opt(directory):
    reference_blip2(directory)
    inputs = prompt_inputs()
    return blipkit.Blip2ForConditionalGeneration.from_pretrained(directory), {**inputs, "labels": inputs["input_ids"]}


def blip2_t5(directory):
    reference_blip2_t5(directory)
    labels = torch.tensor([[5, 9, 1], [8, 1, -100]])
    return blipkit.Blip2ForConditionalGeneration.from_pretrained(directory), {**blip2_inputs(), "labels": labels}


# Between them: the ViT, BERT's decoder, the Q-Former, OPT, and T5's encoder and decoder.
MODELS = {"blip-caption": captioner, "blip2-opt": blip2_opt, "blip2-t5": blip2_t5}
STACKS = {
    "blip-caption": {"vision_model.layers", "text_decoder.bert.layers"},
    "blip2-opt": {"vision_model.layers", "qformer.layers", "language_model.decoder.layers"},
    "blip2-t5": {
        "vision_model.layers", "qformer.layers", "language_model.encoder.layers", "language_model.decoder.layers"
    },
}  # fmt: skip


@dataclass
class Record:
    """What a pass did: how often each transformer layer ran (in forward, and again in backward if recomputed), and
    the bytes of activations autograd kept for backward (not counting the parameters, kept either way), in all and
    inside the layers."""

    runs: dict[str, int]
    kept: int = 0
    kept_in_layers: int = 0


@contextmanager
def recorded(model) -> Iterator[Record]:
    record = Record(runs=dict.fromkeys((name for name, _ in model.named_modules() if LAYER.search(name)), 0))
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    depth = 0  # > 0 while a layer's forward runs

    def enter(name):
        def hook(*_):
            nonlocal depth
            depth += 1
            record.runs[name] += 1

        return hook

    def leave(*_):
        nonlocal depth
        depth -= 1

    def keep(tensor):
        if tensor.untyped_storage().data_ptr() not in parameters:
            record.kept += tensor.numel() * tensor.element_size()
            record.kept_in_layers += tensor.numel() * tensor.element_size() if depth else 0
        return tensor

    layers = [model.get_submodule(name) for name in record.runs]
    hooks = [layer.register_forward_pre_hook(enter(name)) for name, layer in zip(record.runs, layers, strict=True)]
    hooks += [layer.register_forward_hook(leave) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            yield record
    finally:
        for hook in hooks:
            hook.remove()


def training_step(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor], Record]:
    """The loss, every parameter's gradient, and the record of the forward and backward passes."""
    model.zero_grad()
    torch.manual_seed(0)
    with recorded(model) as record:
        loss = model(**inputs).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, record


@pytest.mark.parametrize("name", MODELS)
def test_same_gradients_with_fewer_saved_activations(tmp_path, name):
    model, inputs = MODELS[name](tmp_path)
    model.train()
    assert not model.is_gradient_checkpointing
    loss, gradients, plain = training_step(model, inputs)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed_loss, checkpointed_gradients, checkpointed = training_step(model, inputs)

    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=0)
    assert checkpointed_gradients.keys() == gradients.keys()
    for parameter, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[parameter], gradient, atol=1e-6, rtol=1e-6, msg=parameter)
    assert {name.rpartition(".")[0] for name in plain.runs} == STACKS[name]
    assert set(plain.runs.values()) == {1}
    assert set(checkpointed.runs.values()) == {2}  # each layer ran again in backward
    # What the layers kept is gone but for their inputs, which the checkpoints keep instead.
    assert checkpointed.kept_in_layers == 0
    assert checkpointed.kept < plain.kept - 0.5 * plain.kept_in_layers


def test_only_training_passes_with_gradients_are_checkpointed(tmp_path):
    model, inputs = captioner(tmp_path)
    model.gradient_checkpointing_enable()
    for mode, grad in (("eval", True), ("train", False)):
        getattr(model, mode)()
        with torch.set_grad_enabled(grad), recorded(model) as record:
            loss = model(**inputs).loss
            if grad:
                loss.backward()
        assert set(record.runs.values()) == {1}, mode
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    assert set(training_step(model.train(), inputs)[2].runs.values()) == {1}


def test_every_nth_layer_and_the_references_keyword_arguments(tmp_path):
    model, inputs = blip2_opt(tmp_path)
    model.train()
    # transformers.Trainer passes these; the checkpoint options reach torch.utils.checkpoint.checkpoint
    model.activation_checkpointing_enable({"use_reentrant": False, "determinism_check": "none"}, every_n_layers=2)
    assert model.is_activation_checkpointing
    runs = training_step(model, inputs)[2].runs
    assert list(runs.values()) == [2, 1, 2, 1, 2, 1, 2]  # ViT 0-1, Q-Former 0-2, OPT 0-1 in module order
    with pytest.raises(ValueError, match="offload=True is not supported"):
        model.gradient_checkpointing_enable(offload=True)
    with pytest.raises(ValueError, match="every_n_layers must be at least 1, got 0"):
        model.gradient_checkpointing_enable(every_n_layers=0)
