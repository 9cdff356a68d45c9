"""The proof that fine-tuning learns, on 2 CPU cores in well under a minute each: a tiny random BLIP trained on the
synthetic shapes set goes from no held-out skill to captions and answers it gets right."""

from __future__ import annotations

import pytest

from blipkit.train.synthetic import write_shapes
from blipkit.train.trainer import FinetuneOptions, finetune
from tests.reference import TINY_BLIP, save_reference

# Wider than the parity tests' models (64, not 32), without dropout, and 4-pixel patches (an 8 x 8 grid on the 32-pixel
# images) to see where a shape is: enough to learn the set in a few hundred steps.
TEXT = {**TINY_BLIP["text_config"], "hidden_size": 64, "intermediate_size": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}  # fmt: skip
VISION = {**TINY_BLIP["vision_config"], "hidden_size": 64, "intermediate_size": 128, "patch_size": 4}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes(root / "train", 384, seed=0), write_shapes(root / "val", 48, seed=1)


@pytest.mark.parametrize(
    "task, model_class, epochs, lr, metric, first_below, learned_above",
    [
        # CIDEr-D of a perfect caption is 10; the prompt-only captions of an untrained model score ~1.1.
        ("caption", "BlipForConditionalGeneration", 8, 1e-3, "CIDEr", 1.5, 2.8),
        # Chance is ~26% (1 in 4 colours, 3 shapes, 5 positions).
        ("vqa", "BlipForQuestionAnswering", 10, 2e-3, "exact match", 10.0, 45.0),
    ],
)
def test_finetuning_learns_the_synthetic_set(
    shapes, tmp_path, task, model_class, epochs, lr, metric, first_below, learned_above
):
    train, val = shapes
    save_reference(model_class, tmp_path / "model", text_config=TEXT, vision_config=VISION)
    result = finetune(FinetuneOptions(task=task, model=str(tmp_path / "model"), train=[str(train)], val=[str(val)],
                                      out=str(tmp_path / "run"), epochs=epochs, lr=lr, batch_size=16, warmup_steps=10,
                                      progress=False))  # fmt: skip
    curve = [r["val"][metric] for r in result.metrics if "val" in r]
    assert len(curve) == epochs
    assert curve[0] < first_below and max(curve[-3:]) > learned_above, curve
    assert (tmp_path / "run" / "validation.png").is_file()
