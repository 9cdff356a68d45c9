"""`blipkit index`, `blipkit search` and `blipkit eval retrieval` as a user runs them: a real process, exit codes,
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blipkit.index.index import Index
from tests.conftest import IMAGES

BLIPKIT = Path(sys.executable).parent / "blipkit"


def blipkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BLIPKIT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_build_search_and_a_refused_model_in_processes(retrieval_models, photos):
    index = photos.parent / "index"
    built = blipkit("index", "build", photos, "--index", index, "--model", retrieval_models["blip"])
    assert built.returncode == 0, built.stderr
    assert "embedded 4, failed 1" in built.stderr and "broken.jpg" in built.stderr
    found = blipkit("search", "a cup of coffee", "--index", index, "--top-k", "2", "--rerank", "2", "--json")
    hits = json.loads(found.stdout)
    assert found.returncode == 0 and len(hits) == 2 and hits[0]["itm"] is not None
    again = blipkit("index", "add", photos, "--index", index, "--model", retrieval_models["other"])
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "adding with" in again.stderr


def test_errors_are_one_line(tmp_path):
    missing = blipkit("search", "a dog", "--index", tmp_path / "none")
    assert missing.returncode == 1 and missing.stderr.startswith("blipkit: error: no index at")
    assert blipkit("search", "--index", tmp_path).returncode == 1  # neither TEXT nor --image
    assert blipkit("index", "build", "--index", tmp_path).returncode == 2  # usage: no INPUT


def test_eval_retrieval_in_a_process(retrieval_models, tmp_path):
    entries = [{"image": path.name, "caption": [f"photo {i}"]} for i, path in enumerate(IMAGES)]
    (tmp_path / "test.json").write_text(json.dumps(entries))
    result = blipkit("eval", "retrieval", "--annotations", tmp_path / "test.json", "--images", IMAGES[0].parent,
                     "--k-test", "2", "--model", retrieval_models["blip"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TR@1 ") and "IR@10 " in result.stdout


def test_a_build_on_ray_holds_the_local_build_rows(retrieval_models, photos):
    pytest.importorskip("ray", reason="Ray is the 'ray' extra (part of the 'test' extra)")
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    rows = {}
    for engine in ("local", "ray"):
        index = photos.parent / f"{engine}.idx"
        command = [str(BLIPKIT), "index", "build", str(photos), "--index", str(index), "--model",
                   str(retrieval_models["blip"]), "--engine", engine, "--ray-actors", "2"]  # fmt: skip
        built = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert built.returncode == 0, built.stderr[-2000:]
        assert "embedded 4, failed 1" in built.stderr
        rows[engine] = Index.open(index).search(text="a cup of coffee", k=4)
    assert [hit["id"] for hit in rows["ray"]] == [hit["id"] for hit in rows["local"]]
    for on_ray, local in zip(rows["ray"], rows["local"], strict=True):
        assert on_ray["itc"] == pytest.approx(local["itc"], abs=1e-5)
