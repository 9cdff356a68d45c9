"""Configs: the reference's fields and defaults, config.json round trips in both directions, clear errors."""

from __future__ import annotations

import json

import pytest

from blipkit import BlipConfig, BlipTextConfig, BlipVisionConfig, ConfigError

PAIRS = [("BlipConfig", BlipConfig), ("BlipTextConfig", BlipTextConfig), ("BlipVisionConfig", BlipVisionConfig)]
# Fields every transformers config carries whatever the model; not part of BLIP's own contract.
COMMON = {"transformers_version", "architectures", "dtype", "return_dict", "output_hidden_states",
          "output_attentions", "chunk_size_feed_forward", "id2label", "label2id", "problem_type"}  # fmt: skip


@pytest.mark.parametrize("name, ours", PAIRS)
def test_defaults_equal_the_reference(tmp_path, name, ours):
    import transformers

    getattr(transformers, name)().save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    expected = {k: v for k, v in written.items() if k not in COMMON}
    actual = ours().to_dict()
    for key, value in expected.items():
        if isinstance(value, dict) and key.endswith("_config"):
            value = {k: v for k, v in value.items() if k not in COMMON}
            assert {k: actual[key][k] for k in value} == value, key
        else:
            assert actual.get(key) == value, key


def test_reference_config_json_round_trips_and_keeps_unknown_keys(tmp_path):
    import transformers

    reference = transformers.BlipConfig(
        text_config={"hidden_size": 64, "num_attention_heads": 2}, vision_config={"image_size": 224}
    )
    reference.save_pretrained(tmp_path / "ref")
    data = json.loads((tmp_path / "ref" / "config.json").read_text())
    data["my_custom_key"] = {"nested": [1, 2]}
    data["text_config"]["another_unknown"] = "kept"
    (tmp_path / "ref" / "config.json").write_text(json.dumps(data))

    ours = BlipConfig.from_pretrained(tmp_path / "ref")
    assert ours.text_config.hidden_size == 64 and ours.vision_config.image_size == 224
    assert ours.text_config.encoder_hidden_size == ours.vision_config.hidden_size
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved == data
    again = transformers.BlipConfig.from_pretrained(tmp_path / "ours")
    assert again.text_config.hidden_size == 64 and again.vision_config.image_size == 224


def test_part_configs_read_from_a_composite_config(tmp_path):
    BlipConfig(vision_config={"hidden_size": 96}).save_pretrained(tmp_path)
    assert BlipVisionConfig.from_pretrained(tmp_path).hidden_size == 96
    assert BlipTextConfig.from_pretrained(tmp_path).encoder_hidden_size == 96


def test_from_dict_to_dict_round_trip():
    config = BlipConfig.from_dict({"projection_dim": 7, "text_config": {"vocab_size": 99}, "odd": True})
    assert BlipConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["odd"] is True


@pytest.mark.parametrize(
    "data, message",
    [
        ({"hidden_size": "big"}, "BlipVisionConfig.hidden_size must be int, got 'big'"),
        ({"hidden_size": True}, "BlipVisionConfig.hidden_size must be int, got True"),
        ({"layer_norm_eps": None}, "BlipVisionConfig.layer_norm_eps must be float, got None"),
        ({"model_type": "bert"}, "BlipVisionConfig needs model_type 'blip_vision_model', config.json has 'bert'"),
    ],
)
def test_bad_config_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BlipVisionConfig.from_dict(data)


def test_invalid_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        BlipConfig.from_pretrained(tmp_path)
