"""Line charts drawn with Pillow: a PNG of the asked size, each series a line in its own colour going the way its
values go, and a clear error for what cannot be drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from blipkit.train.plot import PALETTE, plot_curves


def pixels_of(image: Image.Image, colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) coordinates of the pixels of exactly ``colour``."""
    rows, columns = np.nonzero((np.asarray(image.convert("RGB")) == colour).all(axis=2))
    return columns, rows


def test_each_series_is_a_line_in_its_own_colour_that_goes_its_way(tmp_path):
    steps = range(0, 201, 10)
    series = {
        "training loss": [(s, 3.0 - s / 100) for s in steps],  # falls
        "CIDEr": [(s, s / 100) for s in steps],  # rises
    }
    path = plot_curves(series, tmp_path / "run" / "curves.png", title="finetune", x_label="step", y_label="value")
    assert path == tmp_path / "run" / "curves.png"
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (800, 500))
        (falling_x, falling_y), (rising_x, rising_y) = (pixels_of(image, c) for c in PALETTE[:2])
        assert not pixels_of(image, PALETTE[2])[0].size  # no third series, no third colour
    # In the plot area (x < 640 here; the legend's swatches lie right of it) both lines span nearly its width, and -
    # image rows growing downwards - a falling series' pixels go down (rows up) as x grows, a rising one's the other
    # way.
    for x, y, direction in ((falling_x, falling_y, 1), (rising_x, rising_y, -1)):
        plot = x < 640
        assert x[plot].min() < 60 and x[plot].max() > 620
        assert direction * np.corrcoef(x[plot], y[plot])[0, 1] > 0.95


def test_a_single_point_a_flat_series_and_another_size(tmp_path):
    path = plot_curves(
        {"VQA accuracy": [(3, 0.5)], "flat": [(0, 1.0), (5, 1.0)]},
        tmp_path / "one.png",
        title="held-out vqa",
        x_label="step",
        y_label="accuracy",
        size=(640, 400),
    )
    with Image.open(path) as image:
        assert image.size == (640, 400)
        assert all(pixels_of(image, colour)[0].size > 20 for colour in PALETTE[:2])


@pytest.mark.parametrize(
    "series, message",
    [
        ({}, "there is no series to plot"),
        ({"loss": []}, "the series 'loss' has no points"),
        ({"loss": [(0, 1.0), (1, float("nan"))]}, "point 1 of the series 'loss' is (1, nan): it must be finite"),
        ({"loss": [(float("inf"), 1.0)]}, "point 0 of the series 'loss' is (inf, 1.0): it must be finite"),
        ({"loss": [(0, 1.0, 2.0)]}, "point 0 of the series 'loss' is (0, 1.0, 2.0), not a pair of numbers"),
        ({"loss": [(0, "high")]}, "point 0 of the series 'loss' is (0, 'high'), not a pair of numbers"),
        ({str(n): [(0, n)] for n in range(11)}, "11 series are more than the 10 colours a chart tells apart"),
    ],
)
def test_what_cannot_be_drawn_is_a_clear_error(tmp_path, series, message):
    with pytest.raises(ValueError) as raised:
        plot_curves(series, tmp_path / "x.png", title="t", x_label="x", y_label="y")
    assert str(raised.value) == message
    assert not (tmp_path / "x.png").exists()


def test_too_small_an_image_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^120x80 pixels is too small for a chart of loss$"):
        plot_curves({"loss": [(0, 1)]}, tmp_path / "x.png", title="t", x_label="x", y_label="y", size=(120, 80))
