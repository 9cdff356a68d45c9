"""The index, search and eval commands through their own parsers and handlers, as `blipkit` runs them."""

from __future__ import annotations

import argparse
import json

import pytest

from blipkit.evaluate.commands import add_commands as add_eval_commands
from blipkit.index.commands import add_commands
from tests.conftest import IMAGES


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="blipkit")
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands)
    add_eval_commands(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_build_search_info_remove(retrieval_models, photos, capsys):
    index = str(photos.parent / "index")
    model = str(retrieval_models["blip"])
    assert run(["index", "build", str(photos), "--index", index, "--model", model]) == 0
    assert f"failed: {photos / 'broken.jpg'}: cannot read image" in capsys.readouterr().err
    assert run(["search", "a cup of coffee", "--index", index, "--top-k", "2", "--rerank", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and set(hits[0]) == {"id", "path", "score", "itc", "itm"} and hits[0]["itm"] is not None
    assert run(["search", "--image", str(IMAGES[1]), "--index", index, "--top-k", "1"]) == 0
    assert capsys.readouterr().out.endswith(f"\t{photos / IMAGES[1].name}\n")
    assert run(["index", "remove", hits[0]["id"], "--index", index]) == 0
    assert run(["index", "info", index, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["count"], info["model"], info["kind"], info["dim"]) == (3, model, "images", 24)
    assert run(["index", "add", str(photos / "broken.jpg"), "--index", index]) == 3  # every image failed


def test_texts_and_dedup(retrieval_models, tmp_path, capsys):
    (tmp_path / "captions.csv").write_text("id,caption\na,a cat\nb,a rocket\nc,a cat\n")
    index = str(tmp_path / "texts")
    model = str(retrieval_models["blip"])
    assert run(["index", "build-texts", str(tmp_path / "captions.csv"), "--index", index, "--model", model]) == 0
    assert "embedded 2, failed 0, skipped 0, duplicates 1" in capsys.readouterr().err
    assert run(["search", "--image", str(IMAGES[0]), "--index", index, "--json", "--rerank", "2"]) == 0
    assert {hit["text"] for hit in json.loads(capsys.readouterr().out)} == {"a cat", "a rocket"}
    assert run(["index", "dedup", "--index", index, "--threshold", "0.999"]) == 0
    assert capsys.readouterr().out == ""


def test_eval_retrieval(retrieval_models, tmp_path, capsys):
    entries = [{"image": path.name, "caption": [f"photo {i}", f"picture {i}"]} for i, path in enumerate(IMAGES)]
    (tmp_path / "test.json").write_text(json.dumps(entries))
    argv = ["eval", "retrieval", "--annotations", str(tmp_path / "test.json"), "--images", str(IMAGES[0].parent)]
    assert run([*argv, "--k-test", "2", "--model", str(retrieval_models["blip"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"}
    assert result["img_r5"] == 100.0  # 4 images: every one within 5


def test_search_needs_one_query(retrieval_models, photos):
    with pytest.raises(ValueError, match="a TEXT or --image"):
        run(["search", "--index", str(photos)])
