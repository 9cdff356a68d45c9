"""Auto classes on tiny BLIP and BLIP-2 checkpoints resolve to the classes the reference's resolve to, load what the
reference loads, and pass their keyword arguments on; the config constructors build what the reference builds."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import blipkit
from blipkit import auto
from blipkit.tasks import PROCESSORS
from tests.builders.checkpoints import save_tiny_blip2s
from tests.builders.configs import SAME_WIDTH
from tests.conftest import IMAGES
from tests.hubcache import prefill
from tests.reference import save_reference

AUTO_CLASSES = [name for name in blipkit.__all__ if name.startswith("Auto")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints with their processors, named by family and head."""
    root = tmp_path_factory.mktemp("auto")
    save_reference("BlipForConditionalGeneration", root / "blip-caption")
    save_reference("BlipForQuestionAnswering", root / "blip-vqa", **SAME_WIDTH)
    save_reference("BlipModel", root / "blip-model")
    blip2 = save_tiny_blip2s(root / "blip2")
    return {
        **{p.name: p for p in root.iterdir() if p.name.startswith("blip-")},
        **{f"blip2-{k}": v for k, v in blip2.items()},
    }


# Each Auto model class on checkpoints of the class it picks, so both libraries load every weight.
MODEL_CASES = [
    ("AutoModel", "blip-model"),
    ("AutoModel", "blip2-opt"),
    ("AutoModelForVisualQuestionAnswering", "blip-vqa"),
    ("AutoModelForVisualQuestionAnswering", "blip2-t5"),
    ("AutoModelForImageTextToText", "blip-caption"),
    ("AutoModelForImageTextToText", "blip2-opt"),
    ("AutoModelForZeroShotImageClassification", "blip-model"),
    ("AutoModelForZeroShotImageClassification", "blip2-itm"),
]


@pytest.mark.parametrize("auto_class, checkpoint", MODEL_CASES)
def test_auto_model_is_the_class_the_reference_picks(checkpoints, auto_class, checkpoint):
    import transformers

    ours = getattr(blipkit, auto_class).from_pretrained(checkpoints[checkpoint])
    reference = getattr(transformers, auto_class).from_pretrained(checkpoints[checkpoint])
    assert type(ours).__name__ == type(reference).__name__


@pytest.mark.parametrize("checkpoint", ["blip-caption", "blip2-opt"])
def test_vision2seq_is_image_text_to_text_under_its_old_name(checkpoints, checkpoint):
    """transformers 5 removed AutoModelForVision2Seq; blipkit keeps it, as AutoModelForImageTextToText."""
    import transformers

    ours = blipkit.AutoModelForVision2Seq.from_pretrained(checkpoints[checkpoint])
    reference = transformers.AutoModelForImageTextToText.from_pretrained(checkpoints[checkpoint])
    assert type(ours).__name__ == type(reference).__name__
    assert not hasattr(transformers, "AutoModelForVision2Seq")


@pytest.mark.parametrize("auto_class", ["AutoConfig", "AutoProcessor"])
@pytest.mark.parametrize("checkpoint", ["blip-caption", "blip2-opt", "blip2-t5"])
def test_auto_config_and_processor_are_the_reference_classes(checkpoints, auto_class, checkpoint):
    import transformers

    ours = getattr(blipkit, auto_class).from_pretrained(checkpoints[checkpoint])
    reference = getattr(transformers, auto_class).from_pretrained(checkpoints[checkpoint])
    assert type(ours).__name__ == type(reference).__name__


@pytest.mark.parametrize("checkpoint", ["blip-caption", "blip2-t5"])
def test_auto_image_processor_makes_the_reference_pixel_values(checkpoints, checkpoint):
    import transformers

    ours = blipkit.AutoImageProcessor.from_pretrained(checkpoints[checkpoint])
    reference = transformers.AutoImageProcessor.from_pretrained(checkpoints[checkpoint])
    # Without torchvision the reference picks its PIL twin, which is what blipkit's BlipImageProcessor matches.
    assert type(reference).__name__ in (type(ours).__name__, type(ours).__name__ + "Pil")
    image = Image.open(IMAGES[0])
    expected = reference(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours(image)["pixel_values"], expected)
    fast = blipkit.AutoImageProcessor.from_pretrained(checkpoints[checkpoint], use_fast=True)
    assert type(fast) is blipkit.BlipImageProcessorFast


@pytest.mark.parametrize("checkpoint", ["blip-caption", "blip2-opt", "blip2-t5"])
def test_auto_tokenizer_tokenizes_as_the_reference(checkpoints, checkpoint):
    """The reference names BertTokenizer, GPT2Tokenizer, T5Tokenizer; blipkit's is the class its processor uses."""
    import transformers

    ours = blipkit.AutoTokenizer.from_pretrained(checkpoints[checkpoint])
    reference = transformers.AutoTokenizer.from_pretrained(checkpoints[checkpoint])
    assert type(ours) is type(blipkit.AutoProcessor.from_pretrained(checkpoints[checkpoint]).tokenizer)
    texts = ["how many dogs are in the picture?", "A woman and a dog"]
    assert ours(texts, padding=True)["input_ids"] == reference(texts, padding=True)["input_ids"]


def test_every_auto_class_covers_both_families():
    for name in AUTO_CLASSES:
        classes = getattr(auto, name).classes
        assert set(classes) == set(PROCESSORS), name
        assert all(hasattr(blipkit, c) for c in classes.values()), name


def test_keywords_and_hub_settings_go_to_the_class(checkpoints, tmp_path):
    prefill(tmp_path, "tiny-org/blip-caption", checkpoints["blip-caption"])
    model = blipkit.AutoModelForImageTextToText.from_pretrained(
        "tiny-org/blip-caption", cache_dir=tmp_path, local_files_only=True, dtype=torch.bfloat16
    )
    assert type(model) is blipkit.BlipForConditionalGeneration and model.dtype == torch.bfloat16
    config = blipkit.AutoConfig.from_pretrained("tiny-org/blip-caption", cache_dir=tmp_path, local_files_only=True)
    assert config.vision_config.image_size == 32


def test_config_without_model_type_is_read_by_its_architectures(checkpoints, tmp_path):
    config = json.loads((checkpoints["blip2-opt"] / "config.json").read_text())
    del config["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert type(blipkit.AutoConfig.from_pretrained(tmp_path)) is blipkit.Blip2Config


def test_a_model_type_blipkit_does_not_implement_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaModel"]}))
    with pytest.raises(ValueError, match=r"is a 'llava' checkpoint .*blipkit runs 'blip' and 'blip-2' checkpoints"):
        blipkit.AutoModel.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------- config constructors
def _shared_fields(ours: dict, reference: dict) -> tuple[dict, dict]:
    """The fields both configs have, sub-configs compared the same way."""
    common = [k for k in ours if k in reference]
    pairs = {k: _shared_fields(ours[k], reference[k]) if isinstance(ours[k], dict) else (ours[k], reference[k])
             for k in common}  # fmt: skip
    return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


def assert_same_config(ours, reference) -> None:
    mine, theirs = _shared_fields(ours.to_dict(), reference.to_dict())
    assert mine == theirs
    assert len(mine) >= len(ours.to_dict()) - 1  # nearly every field blipkit knows is compared


TEXT = {"hidden_size": 64, "num_attention_heads": 2, "vocab_size": 500}
VISION = {"hidden_size": 96, "image_size": 224, "num_hidden_layers": 3}


@pytest.mark.parametrize("as_dicts", [False, True])
def test_blip_config_from_text_vision_configs(as_dicts):
    """transformers 4 had the constructor (for config objects); 5 builds the same with BlipConfig(text_config=...)."""
    import transformers

    text, vision = (TEXT, VISION) if as_dicts else (blipkit.BlipTextConfig(**TEXT), blipkit.BlipVisionConfig(**VISION))
    ours = blipkit.BlipConfig.from_text_vision_configs(text, vision, projection_dim=7)
    reference = transformers.BlipConfig(
        text_config=transformers.BlipTextConfig(**TEXT),
        vision_config=transformers.BlipVisionConfig(**VISION),
        projection_dim=7,
    )
    assert_same_config(ours, reference)
    assert ours.text_config.encoder_hidden_size == 96
    if not as_dicts:
        assert text.encoder_hidden_size == 768  # the part given is left as it was


QFORMER = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize("language_model", [None, "opt", "t5"])
def test_blip2_config_from_vision_qformer_text_configs(language_model):
    import transformers

    text_configs = {"opt": ("OPTConfig", {"hidden_size": 64, "ffn_dim": 80}), "t5": ("T5Config", {"d_model": 64})}
    ours_text = reference_text = None
    if language_model:
        name, fields = text_configs[language_model]
        ours_text, reference_text = getattr(blipkit, name)(**fields), getattr(transformers, name)(**fields)
    ours = blipkit.Blip2Config.from_vision_qformer_text_configs(
        blipkit.Blip2VisionConfig(**VISION), blipkit.Blip2QFormerConfig(**QFORMER), ours_text, num_query_tokens=8
    )
    reference = transformers.Blip2Config(
        vision_config=transformers.Blip2VisionConfig(**VISION),
        qformer_config=transformers.Blip2QFormerConfig(**QFORMER),
        text_config=reference_text,
        num_query_tokens=8,
    )
    assert_same_config(ours, reference)
    assert type(ours.text_config).model_type == (language_model or "opt")
    assert ours.qformer_config.encoder_hidden_size == 96


def test_a_part_config_of_another_kind_is_named():
    with pytest.raises(blipkit.ConfigError, match="a part config must be a config or a dict, got 'big'"):
        blipkit.BlipConfig.from_text_vision_configs("big", {})
