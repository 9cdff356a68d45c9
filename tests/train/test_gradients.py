"""Training parity: in train mode, every trainable model's loss and the gradient of every parameter equal the
reference's, on the same tiny checkpoint; and backward runs in bfloat16 on both CPU paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blipkit
from blipkit.modeling import layers, linear
from blipkit.modeling.layers import Attention
from tests.builders.configs import SAME_WIDTH
from tests.builders.inputs import blip2_inputs, prompt_inputs, sample_inputs
from tests.builders.models import reference_blip2, reference_blip2_t5
from tests.builders.tolerances import close
from tests.reference import TINY_BLIP, save_reference

# Dropout is off in every test model (BLIP's configs set it to 0 here; the BLIP-2 builders' Q-Former, OPT and T5
# configs already do), so that train mode is deterministic and two implementations can be compared.
NO_DROPOUT = {
    "text_config": {**TINY_BLIP["text_config"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "vision_config": {**TINY_BLIP["vision_config"], "attention_dropout": 0.0},
}
NO_DROPOUT_SAME_WIDTH = {**NO_DROPOUT, "vision_config": {**SAME_WIDTH["vision_config"], "attention_dropout": 0.0}}

LEFT_PADDED = {  # [PAD] first: its embedding's row gets no gradient from the lookup, as the reference's padding_idx
    "input_ids": torch.tensor([[0, 101, 1037, 4937, 102], [101, 2054, 2003, 2023, 102]]),
    "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
}


def blip_pair(tmp_path, class_name: str, config=NO_DROPOUT):
    reference = save_reference(class_name, tmp_path, **config)
    return reference, getattr(blipkit, class_name).from_pretrained(tmp_path)


def blip2_pair(tmp_path, language_model: str):
    reference = reference_blip2(tmp_path) if language_model == "opt" else reference_blip2_t5(tmp_path)
    return reference, blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)


def masked_labels(inputs: dict) -> torch.Tensor:
    return inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)


def assert_same_training_step(reference: nn.Module, ours: nn.Module, loss_of) -> None:
    """``loss_of(model)`` and every parameter's gradient after its backward, in train mode, equal the reference's;
    parameters are matched by their checkpoint keys."""
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in ours.modules()), "the test model has dropout"
    assert not any(isinstance(m, Attention) and m.dropout > 0 for m in ours.modules()), "the test model has dropout"
    losses = []
    for model in (reference, ours):
        model.train()
        loss = loss_of(model)
        loss.backward()
        losses.append(loss)
    close(losses[1], losses[0])
    expected = {ours.key_map.to_ours(key): param.grad for key, param in reference.named_parameters()}
    actual = {name: param.grad for name, param in ours.named_parameters()}
    assert sorted(actual) == sorted(expected)
    for name, grad in actual.items():
        assert (grad is None) == (expected[name] is None), name
        if grad is not None:
            # float32 gradients through a dozen layers carry rounding noise of ~1e-5 of their scale: against float64
            # gradients, the reference's own were 2-5e-6 off on the T5 model, where some reach 35.
            scale = max(1.0, expected[name].abs().max().item())
            torch.testing.assert_close(
                grad, expected[name], atol=1e-5 * scale, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )


@pytest.mark.parametrize("padding", ["right", "left"])
def test_captioning(tmp_path, padding):
    inputs = sample_inputs() | (LEFT_PADDED if padding == "left" else {})
    reference, ours = blip_pair(tmp_path, "BlipForConditionalGeneration")
    assert_same_training_step(reference, ours, lambda model: model(**inputs, labels=masked_labels(inputs)).loss)


def test_question_answering(tmp_path):
    inputs = sample_inputs()
    answers = {  # [DEC] answer [SEP], the shorter padded
        "labels": torch.tensor([[30522, 2748, 102, 0], [30522, 2048, 2000, 102]]),
        "decoder_attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
    }
    reference, ours = blip_pair(tmp_path, "BlipForQuestionAnswering", NO_DROPOUT_SAME_WIDTH)
    assert_same_training_step(reference, ours, lambda model: model(**inputs, **answers).loss)


def test_image_text_matching(tmp_path):
    inputs = sample_inputs()
    reference, ours = blip_pair(tmp_path, "BlipForImageTextRetrieval")
    matches = torch.tensor([1, 0])
    assert_same_training_step(reference, ours, lambda model: F.cross_entropy(model(**inputs).itm_score, matches))


def test_image_text_contrastive_similarity(tmp_path):
    inputs = sample_inputs()
    reference, ours = blip_pair(tmp_path, "BlipForImageTextRetrieval")

    def loss_of(model):  # image i's text is text i: a contrastive loss over the (images, texts) cosines
        similarity = model(**inputs, use_itm_head=False).itm_score / 0.07
        return F.cross_entropy(similarity, torch.arange(len(similarity)))

    assert_same_training_step(reference, ours, loss_of)


def test_contrastive_model(tmp_path):
    inputs = sample_inputs()
    reference, ours = blip_pair(tmp_path, "BlipModel")
    assert_same_training_step(reference, ours, lambda model: model(**inputs, return_loss=True).loss)


def test_blip2_opt(tmp_path):
    inputs = prompt_inputs()  # the second row left-padded: OPT's padding row gets no gradient from the lookup
    reference, ours = blip2_pair(tmp_path, "opt")
    assert_same_training_step(reference, ours, lambda model: model(**inputs, labels=masked_labels(inputs)).loss)


def test_blip2_t5(tmp_path):
    inputs = blip2_inputs()
    labels = torch.tensor([[5, 9, 1], [8, 1, -100]])
    reference, ours = blip2_pair(tmp_path, "t5")
    assert_same_training_step(reference, ours, lambda model: model(**inputs, labels=labels).loss)


@pytest.mark.parametrize("slow_bf16", [True, False], ids=["bf16-upcast", "bf16-native"])
def test_bfloat16_backward(tmp_path, monkeypatch, slow_bf16):
    """Both CPU paths train in bfloat16 (the native one attends eagerly for few queries, in place where no gradient
    needs the softmax): gradients within bfloat16's noise of float32's."""
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", slow_bf16)
    monkeypatch.setattr(
        layers, "eager_max_queries", lambda dtype: layers.EAGER_MAX_QUERIES
    )  # whatever this CPU measures
    reference_blip2(tmp_path)
    inputs, gradients = prompt_inputs(), []
    for dtype in (torch.float32, torch.bfloat16):
        model = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype).train()
        model(**inputs, labels=masked_labels(inputs)).loss.backward()
        gradients.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    full, half = gradients
    assert torch.isfinite(half).all()
    assert (half - full).norm() < 0.05 * full.norm()
