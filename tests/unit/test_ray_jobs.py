"""The same job on a local 2-CPU Ray (Ray Data map_batches over an actor pool) writes what a local run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders.datasets import img2dataset_parquet, webdataset_shard

pytest.importorskip("ray", reason="Ray is the 'ray' extra (part of the 'test' extra)")
BLIPKIT = Path(sys.executable).parent / "blipkit"


def test_ray_engine_output_equals_local_output(models, photos, tmp_path):
    img2dataset_parquet(tmp_path / "part.parquet")
    webdataset_shard(tmp_path / "shard.tar")
    inputs = [str(photos), str(tmp_path / "part.parquet"), str(tmp_path / "shard.tar")]
    common = ["--model", str(models / "caption"), "--batch-size", "3", "--max-new-tokens", "6"]
    local = tmp_path / "local.jsonl"
    distributed = tmp_path / "ray.jsonl"
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.run([str(BLIPKIT), "caption", *inputs, "--out", str(local), *common],
                           capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        [str(BLIPKIT), "caption", *inputs, "--out", str(distributed), *common, "--engine", "ray", "--ray-actors", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "caption: done 15, failed 1, skipped 0" in second.stderr

    def rows(path):
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["id"])

    assert rows(distributed) == rows(local)
    assert len(rows(local)) == 16
