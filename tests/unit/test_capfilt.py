"""CapFilt: rows equal the captioner's seeded sampling and the filter's own ITM/ITC outputs computed directly, the
same in any batch size, after an interrupted run, and on Ray; shards and the report hold what the rows say."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

import blipkit
from blipkit import jobs
from blipkit.jobs.bootstrapping import CapFiltWorker, image_generator
from tests.conftest import IMAGES

BLIPKIT = Path(sys.executable).parent / "blipkit"
SETTINGS = {"captions_per_image": 2, "max_new_tokens": 6, "seed": 3}
WEB = ["a cat lying on a blanket", "an astronaut in space", "", "a cup of coffee"]


@pytest.fixture
def table(tmp_path):
    """A CSV of the four photographs with web captions (one empty), and a row whose image is missing."""
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "path", "caption"])
        for i, (image, caption) in enumerate(zip(IMAGES, WEB, strict=True)):
            writer.writerow([f"k{i}", str(image), caption])
        writer.writerow(["k4", str(tmp_path / "gone.jpg"), "a ghost"])
    return path


def capfilt(models, inputs, out, **kwargs):
    options = {"captioner": str(models / "caption"), "filter": str(models / "itm"), "progress": False}
    return jobs.capfilt(inputs, out, **{**options, **SETTINGS, **kwargs})


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@torch.no_grad()
def expected_rows(models, table):
    """Each image computed on its own: generate with its generator, then the ITM head's and ITC's own outputs."""
    captioner = blipkit.BlipForConditionalGeneration.from_pretrained(models / "caption")
    cap_processor = blipkit.BlipProcessor.from_pretrained(models / "caption")
    matcher = blipkit.BlipForImageTextRetrieval.from_pretrained(models / "itm")
    itm_processor = blipkit.BlipProcessor.from_pretrained(models / "itm")
    rows = []
    for i, (image, web) in enumerate(zip(IMAGES, WEB, strict=True)):
        image_id = f"{table}:k{i}"
        inputs = cap_processor(images=str(image), text="a picture of ", return_tensors="pt")
        ids = captioner.generate(**inputs, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=6,
                                 num_return_sequences=2, generator=image_generator(3, image_id))  # fmt: skip
        synthetic = [t.removeprefix("a picture of").strip() for t in cap_processor.batch_decode(ids, True)]
        texts = ([web] if web else []) + synthetic
        pair = itm_processor(images=[str(image)] * len(texts), text=texts, padding=True, return_tensors="pt")
        itm = matcher(**pair, use_itm_head=True).itm_score.softmax(-1)[:, 1]
        itc = matcher(**pair, use_itm_head=False).itm_score.diagonal()
        sources = ["web"] * bool(web) + ["synthetic"] * 2
        for source, text, p, s in zip(sources, texts, itm.tolist(), itc.tolist(), strict=True):
            rows.append({"id": image_id, "source": source, "caption": text, "itm": p, "itc": s, "kept": p > 0.5})
    return rows


def assert_rows_equal(actual, expected):
    """Texts, sources and keep flags exactly; scores to float precision (a batch's products round differently)."""
    assert [(r["id"], r["source"], r["caption"], r["kept"]) for r in actual] == [
        (r["id"], r["source"], r["caption"], r["kept"]) for r in expected
    ]
    for a, e in zip(actual, expected, strict=True):
        for score in ("itm", "itc"):
            assert (a[score] is None) == (e[score] is None)
            assert a[score] is None or a[score] == pytest.approx(e[score], abs=1e-5)


def test_rows_equal_the_models_computed_directly(models, table, tmp_path):
    out = tmp_path / "capfilt.jsonl"
    summary = capfilt(models, table, out, batch_size=3)
    assert (summary.done, summary.failed) == (4, 1)
    rows = rows_of(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["id"] == f"{table}:k4" and "gone.jpg" in failed[0]["error"]
    assert failed[0]["caption"] is None and failed[0]["kept"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert_rows_equal(ok, expected_rows(models, table))
    assert any(r["kept"] for r in ok) or all(r["itm"] <= 0.5 for r in ok)


def test_batch_size_and_an_interrupted_run_change_nothing(models, table, tmp_path, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    capfilt(models, table, whole, batch_size=1)

    calls = []
    infer = CapFiltWorker.infer

    def dies_after_one_batch(self, batch):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return infer(self, batch)

    monkeypatch.setattr(CapFiltWorker, "infer", dies_after_one_batch)
    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        capfilt(models, table, resumed, batch_size=2, workers=1)
    assert not resumed.exists()  # the rows so far are in the journal, each image's rows whole
    journal = tmp_path / "resumed.jsonl.partial.jsonl"
    assert [len(r.get("rows", [None])) for r in rows_of(journal)] == [3, 3]
    monkeypatch.setattr(CapFiltWorker, "infer", infer)
    summary = capfilt(models, table, resumed, batch_size=2)
    assert (summary.done, summary.failed, summary.skipped) == (2, 1, 2)
    assert_rows_equal(rows_of(resumed), rows_of(whole))


def test_other_formats_shards_and_the_report(models, table, tmp_path):
    capfilt(models, table, tmp_path / "rows.jsonl", keep="top", top_k=1)
    rows = rows_of(tmp_path / "rows.jsonl")
    for image_id in {r["id"] for r in rows if r["status"] == "ok"}:
        mine = [r for r in rows if r["id"] == image_id]
        best = max(mine, key=lambda r: r["itm"])
        assert [r["kept"] for r in mine] == [r is best for r in mine]  # top-1 by ITM

    capfilt(models, table, tmp_path / "rows.csv", keep="top", top_k=1)
    with (tmp_path / "rows.csv").open() as f:
        table_rows = list(csv.DictReader(f))
    assert [(r["id"], r["caption"], r["kept"]) for r in table_rows] == [
        (r["id"], r["caption"] or "", str(r["kept"]) if r["kept"] is not None else "") for r in rows
    ]

    shards = tmp_path / "shards"
    report = tmp_path / "report.html"
    capfilt(models, table, f"{shards}/", keep="top", top_k=1, report=report)
    kept = [r for r in rows_of(shards / "capfilt.jsonl") if r["kept"]]
    with tarfile.open(shards / "shard-000000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}
    assert len(files) == 3 * len(kept) == 12
    for number, row in enumerate(kept):
        assert files[f"{number:09d}.txt"].decode() == row["caption"]
        assert json.loads(files[f"{number:09d}.json"])["id"] == row["id"]
        image = next(v for k, v in files.items() if k.startswith(f"{number:09d}.") and k[-3:] in ("jpg", "png"))
        Image.open(io.BytesIO(image)).verify()

    page = report.read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.stack == [] and "Kept and removed" in page and "<svg" in page
    thumbnails = [src for src in parser.images if src.startswith("data:image/jpeg;base64,")]
    assert len(thumbnails) == 16
    for src in thumbnails:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()


def test_bad_settings_are_refused_before_any_work(models, table, tmp_path):
    with pytest.raises(ValueError, match="keep must be one of itm, threshold, top, got 'best'"):
        capfilt(models, table, tmp_path / "a.jsonl", keep="best")
    with pytest.raises(ValueError, match="cannot write .*a.npy: capfilt writes .jsonl, .csv, .parquet, or DIR/"):
        capfilt(models, table, tmp_path / "a.npy")
    with pytest.raises(ValueError, match="threshold is an ITM probability, in \\[0, 1\\]; got 1.5"):
        capfilt(models, table, tmp_path / "a.jsonl", keep="threshold", threshold=1.5)
    assert not list(tmp_path.glob("a.*"))


def test_the_command_on_ray_with_two_actors_equals_the_local_run(models, table, tmp_path):
    pytest.importorskip("ray", reason="Ray is the 'ray' extra (part of the 'test' extra)")
    local = tmp_path / "local.jsonl"
    capfilt(models, table, local, batch_size=2)
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("BLIPKIT_DEBUG", None)
    on_ray = tmp_path / "ray.jsonl"
    command = [str(BLIPKIT), "capfilt", str(table), "--out", str(on_ray), "--captioner", str(models / "caption"),
               "--filter", str(models / "itm"), "--captions-per-image", "2", "--max-new-tokens", "6", "--seed", "3",
               "--batch-size", "1", "--engine", "ray", "--ray-actors", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_rows_equal(sorted(rows_of(on_ray), key=lambda r: r["id"]), sorted(rows_of(local), key=lambda r: r["id"]))
    again = subprocess.run(command[:-4], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "skipped 5" in again.stderr  # a rerun resumes: nothing left to do
    web, synthetic = ([r for r in rows_of(on_ray) if r["source"] == source] for source in ("web", "synthetic"))
    kept_web, kept_synthetic = (sum(r["kept"] for r in rows) for rows in (web, synthetic))
    summary = f"capfilt: kept {kept_web} of 3 web captions, {kept_synthetic} of 8 synthetic"
    assert len(web) == 3 and len(synthetic) == 8 and summary in again.stderr


def test_a_killed_run_resumes_to_the_same_rows(models, table, tmp_path):
    """SIGKILL after the first batch is written (each batch then takes a second), rerun: the rows of an
    uninterrupted run, no image's rows written twice or half."""
    whole = tmp_path / "whole.jsonl"
    capfilt(models, table, whole, batch_size=1)
    out = tmp_path / "killed.jsonl"
    slow = (
        "import sys, time; from blipkit.jobs.bootstrapping import CapFiltWorker; infer = CapFiltWorker.infer; "
        "CapFiltWorker.infer = lambda self, batch: (time.sleep(1), infer(self, batch))[1]; "
        "from blipkit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command = ["capfilt", str(table), "--out", str(out), "--captioner", str(models / "caption"), "--filter",
               str(models / "itm"), "--captions-per-image", "2", "--max-new-tokens", "6", "--seed", "3",
               "--batch-size", "1", "--workers", "1"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", slow, *command], stderr=subprocess.DEVNULL)
    journal = tmp_path / "killed.jsonl.partial.jsonl"
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists() and 1 <= journal.read_text().count("\n") < 5  # killed mid-job
    resumed = subprocess.run([sys.executable, "-m", "blipkit", *command], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_rows_equal(rows_of(out), rows_of(whole))


class _Tags(HTMLParser):
    """Checks that every opened element closes, and collects the images' sources."""

    VOID = {"meta", "img", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing open"
