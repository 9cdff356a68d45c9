"""Checkpoints: what the Keras classes save, transformers and blipkit's torch classes load with the same outputs; a
checkpoint that does not fit is refused with a message naming what is wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import blipkit
from blipkit.checkpoint_files import CheckpointError
from tests.tf.cases import CLASSES, FORWARD, arrays, as_torch, assert_same_outputs

# Checkpoint -> (forward case, the fields compared with transformers' outputs, which name more fields than ours).
PROBES = {
    "blip": ("blip-loss", ["loss", "logits_per_image", "logits_per_text"]),
    "caption": ("caption-loss", ["loss", "logits"]),
    "vqa": ("vqa-loss", ["loss"]),
    "itm": ("itm", ["itm_score"]),
    "text": ("text", ["last_hidden_state", "pooler_output"]),
    "lm": ("lm-loss", ["loss", "logits"]),
    "vision": ("vision", ["last_hidden_state", "pooler_output"]),
}


def tf_class(name: str):
    import blipkit.tf

    return getattr(blipkit.tf, f"TF{CLASSES[name]}")


def probe(name: str, model, inputs: dict) -> dict[str, np.ndarray]:
    case, fields = PROBES[name]
    with torch.no_grad():
        out = arrays(FORWARD[case][1](model, inputs))
    return {field: out[field] for field in fields}


@pytest.mark.parametrize("name", CLASSES)
def test_saved_checkpoint_loads_in_transformers_and_blipkit(pair, inputs, name, tmp_path):
    import transformers

    _, model = pair(name)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [CLASSES[name]]
    expected = probe(name, model, inputs)
    reference, info = getattr(transformers, CLASSES[name]).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    ours = getattr(blipkit, CLASSES[name]).from_pretrained(tmp_path)
    for loaded in (reference.eval(), ours):
        assert_same_outputs(probe(name, loaded, as_torch(inputs)), expected, atol=1e-5)


@pytest.mark.parametrize("name", CLASSES)
def test_save_then_load_round_trips(pair, inputs, checkpoints, name, tmp_path):
    _, model = pair(name)
    model.save_pretrained(tmp_path)
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(checkpoints[name] / "model.safetensors")
    assert sorted(saved) == sorted(original)  # tied weights stay unwritten, as the reference writes them
    for key, value in original.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    reloaded = tf_class(name).from_pretrained(tmp_path)
    assert_same_outputs(probe(name, reloaded, inputs), probe(name, model, inputs), atol=0)


# (class, checkpoint of another head); the VQA model also refuses the captioner's config (its widths differ).
OTHER_HEADS = [("vqa", "caption"), ("caption", "vqa"), ("itm", "blip"), ("blip", "itm"), ("text", "lm"), ("lm", "text")]


@pytest.mark.parametrize(("name", "checkpoint"), OTHER_HEADS)
def test_another_heads_checkpoint_names_the_class_that_reads_it(checkpoints, name, checkpoint):
    directory = checkpoints[checkpoint]
    with pytest.raises(CheckpointError) as error:
        tf_class(name).from_pretrained(directory)
    assert str(error.value) == (
        f"{directory} is a {CLASSES[checkpoint]} checkpoint, which TF{CLASSES[name]} cannot use: "
        f"load it with TF{CLASSES[checkpoint]}"
    )


def edited_checkpoint(source, directory, edit) -> None:
    """A copy of checkpoint ``source`` in ``directory`` whose tensors ``edit`` changed (in place)."""
    shutil.copytree(source, directory)
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


EDITS = {
    "missing": (lambda t: t.pop("vision_model.post_layernorm.bias"), "missing keys: vision_model.post_layernorm.bias"),
    "unexpected": (
        lambda t: t.update({"text_decoder.extra.weight": np.zeros(3, np.float32)}),
        "unexpected keys: text_decoder.extra.weight",
    ),
    "mis-shaped": (
        lambda t: t.update(
            {
                "text_decoder.bert.pooler.dense.weight": np.zeros((2, 3), np.float32),
                "vision_model.embeddings.patch_embedding.bias": np.zeros(7, np.float32),
            }
        ),
        "unexpected keys: text_decoder.bert.pooler.dense.weight; mis-shaped keys: "
        "vision_model.embeddings.patch_embedding.bias (checkpoint (7,), model (48,))",
    ),  # fmt: skip
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_checkpoint_that_does_not_fit_names_its_keys(checkpoints, edit, tmp_path):
    change, described = EDITS[edit]
    edited_checkpoint(checkpoints["caption"], tmp_path / "edited", change)
    with pytest.raises(CheckpointError) as error:
        tf_class("caption").from_pretrained(tmp_path / "edited")
    assert str(error.value) == (
        f"the checkpoint at {tmp_path / 'edited'} does not fit TFBlipForConditionalGeneration: {described}"
    )


def test_a_bfloat16_checkpoint_loads_rounded(pair, checkpoints, tmp_path):
    from safetensors.torch import save_file as save_torch_file

    shutil.copytree(checkpoints["caption"], tmp_path / "bf16")
    original = load_file(checkpoints["caption"] / "model.safetensors")
    save_torch_file({k: torch.from_numpy(v).bfloat16() for k, v in original.items()},
                    tmp_path / "bf16" / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    model = tf_class("caption").from_pretrained(tmp_path / "bf16")
    loaded = {slot.key: np.asarray(slot.variable.numpy()) for slot in model.checkpoint_variables()}
    _, float32_model = pair("caption")
    transposed = {s.key for s in float32_model.checkpoint_variables() if s.layout == "transposed"}
    assert sorted(original) == sorted(loaded)
    for key, value in original.items():
        rounded = torch.from_numpy(value).bfloat16().float().numpy()
        assert value.size < 2 or not np.array_equal(rounded, value), key  # rounding to bfloat16 moved the values
        np.testing.assert_array_equal(loaded[key].T if key in transposed else loaded[key], rounded, err_msg=key)


def test_a_pytorch_pickle_alone_is_refused(checkpoints, tmp_path):
    directory = tmp_path / "pickle"
    directory.mkdir()
    shutil.copy(checkpoints["caption"] / "config.json", directory)
    tensors = load_file(checkpoints["caption"] / "model.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        tf_class("caption").from_pretrained(directory)
    assert str(error.value) == (
        f"{directory / 'pytorch_model.bin'} is a PyTorch pickle; the Keras classes read safetensors only. Write them "
        "once with torch: blipkit's (or transformers') from_pretrained(...).save_pretrained(directory)"
    )


def test_a_sharded_checkpoint_loads(pair, inputs, checkpoints, tmp_path):
    import transformers

    transformers.BlipForImageTextRetrieval.from_pretrained(checkpoints["itm"]).save_pretrained(
        tmp_path, max_shard_size="200KB"
    )
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _, model = pair("itm")
    assert_same_outputs(probe("itm", tf_class("itm").from_pretrained(tmp_path), inputs), probe("itm", model, inputs), 0)
