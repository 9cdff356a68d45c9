"""The README's learning curve: the tiny BLIPs of tests/train/test_learning.py fine-tuned longer on the synthetic
shapes (captioning 16 epochs, VQA 20), their held-out scores after each epoch drawn into docs/finetune-shapes.png.

    .venv/bin/python bench/plot_finetune_shapes.py     # about a minute on 2 cores
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' tiny model settings

from blipkit.train.plot import plot_curves  # noqa: E402
from blipkit.train.synthetic import write_shapes  # noqa: E402
from blipkit.train.trainer import FinetuneOptions, finetune  # noqa: E402
from tests.reference import save_reference  # noqa: E402
from tests.train.test_learning import TEXT, VISION  # noqa: E402

RUNS = [  # task, model class, epochs, learning rate, metric, scale onto 0-100
    ("caption", "BlipForConditionalGeneration", 16, 1e-3, "CIDEr", 10),
    ("vqa", "BlipForQuestionAnswering", 20, 2e-3, "exact match", 1),
]


def main() -> None:
    series, summary = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        train, val = write_shapes(root / "train", 384, seed=0), write_shapes(root / "val", 48, seed=1)
        for task, model_class, epochs, lr, metric, scale in RUNS:
            save_reference(model_class, root / task, text_config=TEXT, vision_config=VISION)
            started = time.perf_counter()
            result = finetune(FinetuneOptions(task=task, model=str(root / task), train=[str(train)], val=[str(val)],
                                              out=str(root / f"run-{task}"), epochs=epochs, lr=lr, batch_size=16,
                                              warmup_steps=10, progress=False))  # fmt: skip
            points = [(r["step"], r["val"][metric]) for r in result.metrics if "val" in r]
            series[f"{task}: {metric}" + (f" x {scale}" if scale != 1 else " %")] = [(s, v * scale) for s, v in points]
            summary[task] = {"seconds": round(time.perf_counter() - started), "steps": result.steps,
                             "curve": [round(v, 2) for _, v in points]}  # fmt: skip
    plot_curves(series, ROOT / "docs" / "finetune-shapes.png", title="tiny BLIPs fine-tuned on the synthetic shapes "
                "(held-out)", x_label="optimizer step (16 examples)", y_label="score")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
