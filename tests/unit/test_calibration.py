"""Where bf16 is native, the row count from which products run in float32 is measured (``linear.upcast_min_rows``):
the decision rule on given timings, the override, its errors, and that the measurement itself gives a valid answer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipkit.modeling import linear

BF16 = torch.empty(1, dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def native_cpu(monkeypatch):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", False)
    monkeypatch.setattr(linear, "_calibrated", {})
    monkeypatch.delenv(linear.UPCAST_ROWS_VARIABLE, raising=False)
    monkeypatch.delenv("BLIPKIT_CPU_CLASS", raising=False)


def fake_timings(monkeypatch, native: dict[int, float], upcast: dict[int, float]) -> None:
    """``best_time`` answers from the tables, by the product's row count and whether it is the float32 one."""

    def best_time(product, repeats=3):
        x = product.__defaults__[0]
        return (upcast if "float32" in product.__code__.co_names else native)[x.shape[0]]

    monkeypatch.setattr(linear, "best_time", best_time)


@pytest.mark.parametrize(
    "upcast_wins_at, expected",
    [
        ({64, 128, 256, 512}, 64),
        ({16, 32, 64, 128, 256, 512}, 16),
        ({32, 128, 256, 512}, 128),  # a count in between where it lost: only from where it kept winning
        ({16, 32, 64, 128, 256}, None),  # lost at the most rows: never
        (set(), None),
    ],
)
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.int8])
def test_float32_from_the_fewest_rows_where_it_kept_winning(monkeypatch, upcast_wins_at, expected, weight_dtype):
    rows = linear.CALIBRATION_ROWS
    fake_timings(
        monkeypatch,
        native={r: 1.0 for r in rows},
        upcast={r: 0.5 if r in upcast_wins_at else 0.95 for r in rows},  # 0.95: faster, but within the margin
    )
    assert linear.calibrate_upcast(torch.bfloat16, weight_dtype) == expected


def test_measured_once_per_pair_of_dtypes_and_followed_by_products(monkeypatch):
    calls = []
    thresholds = {torch.bfloat16: 64, torch.int8: 32}
    monkeypatch.setattr(linear, "calibrate_upcast", lambda *dtypes: calls.append(dtypes) or thresholds[dtypes[1]])
    assert linear.upcast_min_rows(BF16) == 64 and linear.upcast_min_rows(BF16) == 64
    assert linear.upcast_min_rows(BF16, torch.int8) == 32
    assert calls == [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.int8)]
    weight = torch.randn(96, 64).bfloat16()
    assert linear.choose_form(torch.randn(63, 64).bfloat16(), weight).compute is None
    assert linear.choose_form(torch.randn(64, 64).bfloat16(), weight).compute == torch.float32
    int8, scale = torch.ones(96, 64, dtype=torch.int8), torch.ones(96)
    assert linear.choose_form(torch.randn(31, 64).bfloat16(), int8, scale=scale).compute == torch.bfloat16
    assert linear.choose_form(torch.randn(32, 64).bfloat16(), int8, scale=scale).compute == torch.float32
    assert linear.upcast_min_rows(torch.empty(1)) is None  # float32 is never upcast


def test_cpus_without_native_bf16_are_not_measured(monkeypatch):
    monkeypatch.setattr(linear, "_SLOW_LOW_PRECISION", True)
    monkeypatch.setattr(linear, "calibrate_upcast", lambda *dtypes: pytest.fail("measured"))
    assert linear.upcast_min_rows(BF16) == linear.UPCAST_MIN_ROWS


@pytest.mark.parametrize("value, expected", [("never", None), ("48", 48)])
def test_the_environment_can_set_it(monkeypatch, value, expected):
    monkeypatch.setenv(linear.UPCAST_ROWS_VARIABLE, value)
    monkeypatch.setattr(linear, "calibrate_upcast", lambda *dtypes: pytest.fail("measured"))
    assert linear.upcast_min_rows(BF16) == expected


@pytest.mark.parametrize("value", ["0", "-3", "some", "1.5"])
def test_a_bad_setting_names_itself(monkeypatch, value):
    monkeypatch.setenv(linear.UPCAST_ROWS_VARIABLE, value)
    with pytest.raises(ValueError, match=rf"BLIPKIT_UPCAST_MIN_ROWS='{value}': give a positive row count or 'never'"):
        linear.upcast_min_rows(BF16)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.int8])
def test_the_real_measurement_answers_a_measured_row_count_or_never(weight_dtype):
    assert linear.calibrate_upcast(torch.bfloat16, weight_dtype, features=256) in (*linear.CALIBRATION_ROWS, None)


def test_upcast_products_are_within_bf16_rounding_of_native_ones(monkeypatch):
    monkeypatch.setattr(linear, "upcast_min_rows", lambda t, weight_dtype=None: 16)
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(40, 64, generator=generator).bfloat16(), torch.randn(96, 64, generator=generator).bfloat16()
    truth = F.linear(x.double(), weight.double())
    out = linear.linear(x, weight)
    torch.testing.assert_close(out.double(), truth, rtol=2**-8, atol=2**-8 * truth.abs().max().item())
