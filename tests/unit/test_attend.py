"""``attend``: the eager form some CPU classes take equals SDPA's; the CPU class can be forced for testing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blipkit.modeling import layers, linear
from blipkit.modeling.layers import additive_mask, attend, boolean_mask


def sample(rows, queries, keys, kv_rows=None, dtype=torch.float32):
    generator = torch.Generator().manual_seed(rows * 100 + queries)
    kv_rows = kv_rows or rows
    q = torch.randn(rows, 4, queries, 8, generator=generator)
    k, v = (torch.randn(kv_rows, 4, keys, 8, generator=generator) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def sdpa_by_rows(q, k, v, mask, groups):
    """SDPA with each key/value row repeated for its group of query rows: what folding must equal."""
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


PADDING = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "boolean", "fully-masked"], ids=lambda m: f"mask={m}")
@pytest.mark.parametrize("groups", [1, 3])
def test_eager_attention_equals_sdpa(monkeypatch, dtype, mask_kind, groups):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", False)
    monkeypatch.setattr(layers, "eager_max_queries", lambda dtype: layers.EAGER_MAX_QUERIES)  # as if measured faster
    q, k, v = sample(2 * groups, 1, 7, kv_rows=2, dtype=dtype)
    padding = PADDING.clone()
    if mask_kind == "fully-masked":
        padding[1] = 0
    mask = {
        "none": None,
        "additive": additive_mask(padding, 1, dtype),
        "boolean": boolean_mask(padding, 1),
        "fully-masked": boolean_mask(padding, 1),
    }[mask_kind]
    per_row = None if mask is None else mask.repeat_interleave(groups, 0)
    per_row = per_row.float() if per_row is not None and per_row.is_floating_point() else per_row
    expected = sdpa_by_rows(q.float(), k.float(), v.float(), per_row, groups)
    eager = layers._eager_attention  # the form attend takes here must be the eager one
    calls = []
    monkeypatch.setattr(layers, "_eager_attention", lambda *a: calls.append(1) or eager(*a))
    actual = attend(q, k, v, mask)
    assert calls == ([1] if dtype == torch.bfloat16 else [])
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.float(), expected, atol=tolerance, rtol=tolerance)


def test_eager_causal_attention_is_top_left_aligned_as_sdpa(monkeypatch):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", False)
    q, k, v = sample(2, 5, 5)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(layers._eager_attention(q, k, v, None, True, None), expected)
    torch.testing.assert_close(
        layers._eager_attention(q, k, v, None, False, 0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3)
    )


def test_many_queries_and_slow_bf16_cpus_keep_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(layers, "_eager_attention", lambda *a: calls.append(1))
    monkeypatch.setattr(layers, "eager_max_queries", lambda dtype: layers.EAGER_MAX_QUERIES)
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", False)
    attend(*sample(2, layers.EAGER_MAX_QUERIES + 1, 7, dtype=torch.bfloat16))
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", True)
    attend(*sample(2, 1, 7, dtype=torch.bfloat16))
    assert calls == []


@pytest.mark.parametrize(
    "eager_wins_at, expected", [({1, 4, 16}, 16), ({1, 4}, 4), ({1, 16}, 1), ({4, 16}, 0), (set(), 0)]
)
def test_eager_attention_up_to_the_most_queries_where_it_kept_winning(monkeypatch, eager_wins_at, expected):
    def best_time(run, repeats=3):
        queries = run.__defaults__[0].shape[2]
        eager = "_eager_attention" in run.__code__.co_names
        return (0.5 if queries in eager_wins_at else 0.95) if eager else 1.0  # 0.95: within the margin

    monkeypatch.setattr(layers, "best_time", best_time)
    assert layers.calibrate_eager_attention(torch.bfloat16) == expected


def test_eager_attention_is_measured_once_per_dtype_unless_the_class_is_forced(monkeypatch):
    calls = []
    monkeypatch.setattr(layers, "_eager_max_queries", {})
    monkeypatch.setattr(layers, "calibrate_eager_attention", lambda dtype: calls.append(dtype) or 4)
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", False)
    monkeypatch.delenv("BLIPKIT_CPU_CLASS", raising=False)
    assert [layers.eager_attention_is_faster(torch.empty(1, 1, n, 1).bfloat16()) for n in (4, 5, 4)] == [
        True, False, True
    ]  # fmt: skip
    assert calls == [torch.bfloat16]
    monkeypatch.setattr(layers, "_eager_max_queries", {})
    monkeypatch.setenv("BLIPKIT_CPU_CLASS", "avx512_bf16")
    assert layers.eager_max_queries(torch.bfloat16) == layers.EAGER_MAX_QUERIES and calls == [torch.bfloat16]


def test_the_real_attention_measurement_answers_a_timed_count_or_zero():
    assert layers.calibrate_eager_attention(torch.bfloat16) in (0, *layers.EAGER_CALIBRATION_QUERIES)


def run_python(code: str, cpu_class: str) -> subprocess.CompletedProcess:
    env = {"BLIPKIT_CPU_CLASS": cpu_class, "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("cpu_class, slow", [("avx2", True), ("avx512_bf16", False), ("amx", False)])
def test_the_cpu_class_can_be_forced(cpu_class, slow):
    done = run_python(
        "from blipkit.modeling import linear; print(linear.CPU_CLASS, linear._SLOW_LOW_PRECISION)", cpu_class
    )
    assert done.stdout.split() == [cpu_class, str(slow)], done.stderr


def test_an_unknown_cpu_class_is_refused():
    done = run_python("import blipkit.modeling.linear", "avx9000")
    assert "BLIPKIT_CPU_CLASS='avx9000' is not a CPU class; use one of avx2, avx512_bf16, amx" in done.stderr


@pytest.mark.parametrize(
    "cpu_class, upcast_rows, expected",
    [
        ("avx2", "", {"bf16 products computed in float32": "from 8 rows (no native bf16)",
                      "bf16 products, 8 rows": "W @ x.T in float32",
                      "bf16 products, 129 rows": "x @ W.T in float32, from weight slices",
                      "bf16 attention, few queries": "SDPA (no native bf16)",
                      "int8 products in a bf16 model, 129 rows": "x @ W.T in float32, from weight slices"}),
        ("avx512_bf16", "", {"bf16 products computed in float32": "never (not measured: the CPU class is forced)",
                             "bf16 products, 8 rows": "x @ W.T", "bf16 products, 129 rows": "x @ W.T",
                             "bf16 attention, few queries":
                                 "matmul-softmax-matmul up to 16 queries (not measured: the CPU class is forced)",
                             "int8 products in a bf16 model, 129 rows": "x @ W.T in bfloat16, from weight slices"}),
        ("amx", "64", {"bf16 products computed in float32": "from 64 rows (set by BLIPKIT_UPCAST_MIN_ROWS)",
                       "bf16 products, 8 rows": "x @ W.T",
                       "bf16 products, 129 rows": "x @ W.T in float32, from weight slices",
                       "int8 products in a bf16 model, 129 rows": "x @ W.T in float32, from weight slices"}),
    ],
)  # fmt: skip
def test_info_speed_prints_the_forms_this_cpu_class_takes(cpu_class, upcast_rows, expected):
    blipkit = str(Path(sys.executable).parent / "blipkit")
    env = {**os.environ, "BLIPKIT_CPU_CLASS": cpu_class, "BLIPKIT_UPCAST_MIN_ROWS": upcast_rows}
    done = subprocess.run([blipkit, "info", "--speed", "--json"], capture_output=True, text=True, env=env)
    choices = json.loads(done.stdout)
    assert choices["cpu class"].startswith(f"{cpu_class} (")
    assert {key: choices[key] for key in expected} == expected
