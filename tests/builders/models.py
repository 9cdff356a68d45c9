"""Tiny reference (transformers) models with every weight perturbed, saved where blipkit can load them."""

from __future__ import annotations

import torch

import blipkit
from tests.builders.configs import EOS, FLAN, IMAGE_TOKEN, QFORMER, QUERIES, TINY_OPT, TINY_T5, VISION
from tests.builders.inputs import blip2_inputs, prompt_inputs
from tests.reference import perturb_, save_reference


def _perturbed_blip2(text_config: dict, image_token: int):
    """A tiny reference Blip2ForConditionalGeneration on ``text_config``, every weight moved off its init."""
    import transformers

    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config={**QFORMER, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        text_config=text_config,
        num_query_tokens=QUERIES,
        image_token_index=image_token,
    )
    torch.manual_seed(0)
    return perturb_(transformers.Blip2ForConditionalGeneration(config))


def reference_blip2(tmp_path, image_token: int = IMAGE_TOKEN, **text_overrides):
    reference = _perturbed_blip2({**TINY_OPT, **text_overrides}, image_token).eval()
    reference.save_pretrained(tmp_path)
    return reference


def reference_t5(directory, **overrides):
    import transformers

    torch.manual_seed(0)
    reference = perturb_(transformers.T5ForConditionalGeneration(transformers.T5Config(**{**TINY_T5, **overrides})))
    with torch.no_grad():  # make the end token likely, so rows finish at different steps
        reference.shared.weight[EOS] *= 6.0
    reference.eval().save_pretrained(directory)
    return reference


def reference_blip2_t5(directory):
    reference = _perturbed_blip2({**TINY_T5, **FLAN}, IMAGE_TOKEN)
    with torch.no_grad():
        reference.language_model.shared.weight[EOS] *= 6.0
    reference.eval().save_pretrained(directory)
    return reference


def saved_blip2(directory, language_model: str) -> dict:
    """Save a tiny reference BLIP-2 on OPT or T5 in ``directory``; return inputs for its forward."""
    if language_model == "opt":
        reference_blip2(directory)
        return prompt_inputs()
    reference_blip2_t5(directory)
    return {**blip2_inputs(), "decoder_input_ids": torch.tensor([[0, 5, 9], [0, 8, 2]])}


# A head bias towards [SEP] makes some rows finish early and others run to max length, so the padding of
# finished rows and the bookkeeping of finished beams are exercised.
SEP_BOOST = 2.0


def boosted_reference(class_name: str, directory, **overrides):
    """A reference captioner (or VQA model) with the [SEP] boost, saved, and blipkit's load of it."""
    reference = save_reference(class_name, directory, **overrides)
    with torch.no_grad():
        reference.text_decoder.cls.predictions.bias[102] += SEP_BOOST
    reference.save_pretrained(directory)
    return reference, getattr(blipkit, class_name).from_pretrained(directory)
