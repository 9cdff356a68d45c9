"""Checkpoints move both ways between blipkit and the reference, in every file layout the reference writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import blipkit
from blipkit import CheckpointError, ModelNotFoundError
from tests.builders.configs import SAME_WIDTH
from tests.builders.inputs import sample_inputs
from tests.reference import save_reference

CLASSES = ["BlipModel", "BlipForConditionalGeneration", "BlipForQuestionAnswering", "BlipForImageTextRetrieval"]


def comparable_output(model, class_name: str, inputs) -> torch.Tensor:
    with torch.no_grad():
        if class_name == "BlipModel":
            return model(**inputs).logits_per_image
        if class_name == "BlipForConditionalGeneration":
            return model(**inputs).logits
        if class_name == "BlipForQuestionAnswering":
            return model(**inputs, labels=inputs["input_ids"]).loss
        return model(**inputs).itm_score


@pytest.mark.parametrize("class_name", CLASSES)
def test_saved_by_blipkit_loads_in_reference(tmp_path, class_name):
    import transformers

    reference = save_reference(class_name, tmp_path / "ref", **(SAME_WIDTH if "Question" in class_name else {}))
    ours = getattr(blipkit, class_name).from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    again = getattr(transformers, class_name).from_pretrained(tmp_path / "ours").eval()
    assert set(load_file(tmp_path / "ours" / "model.safetensors")) == set(
        load_file(tmp_path / "ref" / "model.safetensors")
    )
    inputs = sample_inputs()
    expected = comparable_output(reference, class_name, inputs)
    torch.testing.assert_close(comparable_output(again, class_name, inputs), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(comparable_output(ours, class_name, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    save_reference("BlipForConditionalGeneration", directory)
    return directory


def _expected_logits(directory):
    model = blipkit.BlipForConditionalGeneration.from_pretrained(directory)
    return comparable_output(model, "BlipForConditionalGeneration", sample_inputs())


def test_pytorch_bin_checkpoint(tmp_path, caption_dir):
    import shutil

    shutil.copy(caption_dir / "config.json", tmp_path)
    torch.save(load_file(caption_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(
        comparable_output(model, "BlipForConditionalGeneration", sample_inputs()), _expected_logits(caption_dir)
    )


def test_reference_sharded_checkpoint_and_our_sharding(tmp_path, caption_dir):
    import transformers

    transformers.BlipForConditionalGeneration.from_pretrained(caption_dir).save_pretrained(
        tmp_path / "ref", max_shard_size="200KB"
    )
    assert (tmp_path / "ref" / "model.safetensors.index.json").exists()
    ours = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "ref")
    expected = _expected_logits(caption_dir)
    torch.testing.assert_close(comparable_output(ours, "BlipForConditionalGeneration", sample_inputs()), expected)
    ours.save_pretrained(tmp_path / "ours", max_shard_size="300KB")
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(comparable_output(again, "BlipForConditionalGeneration", sample_inputs()), expected)


def test_real_hub_layout_with_tied_decoder_keys(tmp_path, caption_dir):
    """Released checkpoints (saved by older versions) also carry the tied decoder weight and bias; they load."""
    import shutil

    shutil.copy(caption_dir / "config.json", tmp_path)
    tensors = load_file(caption_dir / "model.safetensors")
    tensors["text_decoder.cls.predictions.decoder.weight"] = tensors[
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ]
    tensors["text_decoder.cls.predictions.decoder.bias"] = tensors["text_decoder.cls.predictions.bias"]
    save_file({k: v.clone() for k, v in tensors.items()}, tmp_path / "model.safetensors")
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(
        comparable_output(model, "BlipForConditionalGeneration", sample_inputs()), _expected_logits(caption_dir)
    )


def _edit_checkpoint(source, target, edit):
    import shutil

    target.mkdir()
    shutil.copy(source / "config.json", target)
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    save_file(tensors, target / "model.safetensors")


def test_missing_unexpected_and_mis_shaped_keys_are_named(tmp_path, caption_dir):
    def edit(t):
        del t["vision_model.post_layernorm.weight"]
        t["text_decoder.something_new.weight"] = torch.zeros(2)
        t["vision_model.embeddings.class_embedding"] = torch.zeros(1, 1, 7)

    _edit_checkpoint(caption_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as error:
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "bad")
    message = str(error.value)
    assert "missing keys: vision_model.post_layernorm.weight" in message
    assert "unexpected keys: text_decoder.something_new.weight" in message
    assert (
        "mis-shaped keys: vision_model.embeddings.class_embedding (checkpoint (1, 1, 7), model (1, 1, 48))" in message
    )
    assert "strict=False" in message


def test_strict_false_initialises_missing_weights(tmp_path, caption_dir):
    _edit_checkpoint(caption_dir, tmp_path / "partial", lambda t: t.pop("vision_model.post_layernorm.weight"))
    model = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "partial", strict=False)
    weight = model.vision_model.final_norm.weight
    assert not weight.is_meta and torch.equal(weight, torch.ones_like(weight))
    assert all(not p.is_meta for p in model.parameters())


def test_truncated_safetensors_is_reported(tmp_path, caption_dir):
    import shutil

    (tmp_path / "broken").mkdir()
    shutil.copy(caption_dir / "config.json", tmp_path / "broken")
    data = (caption_dir / "model.safetensors").read_bytes()
    (tmp_path / "broken" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file .*truncated"):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "broken")


def test_corrupt_pytorch_bin_is_reported(tmp_path, caption_dir):
    import shutil

    shutil.copy(caption_dir / "config.json", tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="pytorch_model.bin is not a readable PyTorch checkpoint"):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)


def test_missing_config_and_missing_weights(tmp_path, caption_dir):
    import shutil

    (tmp_path / "no_config").mkdir()
    shutil.copy(caption_dir / "model.safetensors", tmp_path / "no_config")
    with pytest.raises(ModelNotFoundError, match="no_config has no config.json"):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "no_config")
    (tmp_path / "no_weights").mkdir()
    shutil.copy(caption_dir / "config.json", tmp_path / "no_weights")
    with pytest.raises(ModelNotFoundError, match="no_weights has no weights: expected model.safetensors"):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path / "no_weights")
    with pytest.raises(ModelNotFoundError, match="no model directory at ./does/not/exist"):
        blipkit.BlipForConditionalGeneration.from_pretrained("./does/not/exist")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bfloat16"])
def test_dtype_and_device_arguments(caption_dir, dtype):
    model = blipkit.BlipForConditionalGeneration.from_pretrained(caption_dir, dtype=dtype, device="cpu")
    expected = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.device == torch.device("cpu") and not model.training


def test_bf16_logits_agree_with_reference_bf16(caption_dir):
    import transformers

    reference = transformers.BlipForConditionalGeneration.from_pretrained(caption_dir, dtype=torch.bfloat16).eval()
    ours = blipkit.BlipForConditionalGeneration.from_pretrained(caption_dir, dtype=torch.bfloat16)
    inputs = sample_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    expected = comparable_output(reference, "BlipForConditionalGeneration", inputs).float()
    actual = comparable_output(ours, "BlipForConditionalGeneration", inputs).float()
    torch.testing.assert_close(actual, expected, atol=0.1, rtol=0.05)


def test_meta_loading_allocates_no_random_weights(caption_dir, monkeypatch):
    """Every parameter comes from the file: no initialiser ever runs on real (non-meta) storage."""
    touched = []
    for name in ("normal_", "kaiming_uniform_", "uniform_", "ones_", "zeros_"):
        original = getattr(torch.nn.init, name)

        def spy(tensor, *args, _original=original, **kwargs):
            touched.append(tensor.is_meta)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    blipkit.BlipForConditionalGeneration.from_pretrained(caption_dir)
    assert touched and all(touched)


def test_weights_are_mapped_copy_on_write(tmp_path, caption_dir):
    """Loaded weights share the file's pages; writing to one (fine-tuning) never writes to the checkpoint."""
    model = blipkit.BlipForConditionalGeneration.from_pretrained(caption_dir)
    weight = model.vision_model.final_norm.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    again = blipkit.BlipForConditionalGeneration.from_pretrained(caption_dir)
    assert torch.equal(again.vision_model.final_norm.weight, original)


def _write_safetensors(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"[1, 2]", "not a readable safetensors file \\(the header is not a JSON object\\)"),
        (b"{not json", "not a readable safetensors file \\(unreadable header"),
        (b'{"w": {"dtype": "F32", "shape": [2]}}', "bad header entry for w"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "w lies outside the file"),
        (b'{"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}', "w has dtype 'C64', which blipkit cannot"),
    ],
)
def test_malformed_safetensors_are_named(tmp_path, caption_dir, header, message):
    import shutil

    shutil.copy(caption_dir / "config.json", tmp_path)
    _write_safetensors(tmp_path / "model.safetensors", header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=message):
        blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
