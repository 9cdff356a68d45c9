"""A line chart as a PNG, drawn with Pillow alone: training loss, held-out CIDEr or VQA accuracy against the step.

Pillow is a core dependency already; matplotlib would be a heavy one for one kind of chart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Ten colours told apart at a glance (matplotlib's "tab10"), one a series.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)
TICKS = 5  # about how many tick labels an axis gets
SWATCH = 24  # length in pixels of a series' line in the legend


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (800, 500),
) -> Path:
    """Draw each series (name -> its (x, y) points) as a line in its own colour, with axes, tick labels, a title and
    a legend, and save it as a PNG at ``path`` (``size`` pixels). Returns the path."""
    points = _checked(series)
    width, height = size
    font, title_font = _font(max(11, height // 36)), _font(max(13, height // 28))
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    text_height = _text_size(draw, "0", font)[1]
    x_ticks, y_ticks = (_ticks([p[axis] for line in points.values() for p in line]) for axis in (0, 1))
    y_tick_width = max(_text_size(draw, _label(t, y_ticks), font)[0] for t in y_ticks)
    legend_width = SWATCH + 12 + max(_text_size(draw, name, font)[0] for name in points)
    # The plot area: room on the left for the y label and tick labels, below for the x ones, above for the title,
    # and on the right for the legend, so that it never hides a line.
    left, right = 2 * text_height + y_tick_width + 16, width - legend_width - 24
    top, bottom = 3 * text_height + 12, height - 3 * text_height - 20
    if right - left < 100 or bottom - top < 100:
        raise ValueError(f"{width}x{height} pixels is too small for a chart of {', '.join(points)}")

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left),
            bottom - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top),
        )

    for x in x_ticks:
        px = to_pixel(x, y_ticks[0])[0]
        draw.line([(px, top), (px, bottom)], fill=GRID)
        _centred(draw, (px, bottom + 6 + text_height / 2), _label(x, x_ticks), font)
    for y in y_ticks:
        py = to_pixel(x_ticks[0], y)[1]
        draw.line([(left, py), (right, py)], fill=GRID)
        label = _label(y, y_ticks)
        draw.text((left - 6 - _text_size(draw, label, font)[0], py - text_height / 2), label, fill=INK, font=font)
    draw.rectangle((left, top, right, bottom), outline=INK)
    _centred(draw, ((left + right) / 2, top / 2), title, title_font)
    _centred(draw, ((left + right) / 2, height - 10 - text_height / 2), x_label, font)
    label = Image.new("RGB", (_text_size(draw, y_label, font)[0] + 4, text_height + 6), BACKGROUND)
    ImageDraw.Draw(label).text((2, 0), y_label, fill=INK, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (8, int((top + bottom - label.height) / 2)))

    for colour, line in zip(PALETTE, points.values(), strict=False):
        pixels = [to_pixel(x, y) for x, y in line]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2, joint="curve")
        if len(pixels) <= 20:  # markers while there are few points to see
            for px, py in pixels:
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
    _legend(draw, list(points), (right + 16, top), font, text_height)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _checked(series: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """The series as lists of float pairs; a ValueError naming the series and point that cannot be drawn."""
    if not series:
        raise ValueError("there is no series to plot")
    if len(series) > len(PALETTE):
        raise ValueError(f"{len(series)} series are more than the {len(PALETTE)} colours a chart tells apart")
    checked = {}
    for name, line in series.items():
        if not line:
            raise ValueError(f"the series {name!r} has no points")
        checked[name] = []
        for number, point in enumerate(line):
            try:
                x, y = (float(value) for value in point)
            except (TypeError, ValueError):
                raise ValueError(f"point {number} of the series {name!r} is {point!r}, not a pair of numbers") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError(f"point {number} of the series {name!r} is {point!r}: it must be finite")
            checked[name].append((x, y))
    return checked


def _ticks(values: list[float]) -> list[float]:
    """About ``TICKS`` round values (steps of 1, 2 or 5 times a power of ten) from at or below the smallest value to
    at or above the largest; a single value gets an axis around it."""
    low, high = min(values), max(values)
    if low == high:
        low, high = low - max(abs(low) * 0.1, 0.5), high + max(abs(high) * 0.1, 0.5)
    raw = (high - low) / (TICKS - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [n * step for n in range(first, last + 1)]


def _label(value: float, ticks: list[float]) -> str:
    """A tick's value with as many decimals as its axis's step needs."""
    step = ticks[1] - ticks[0]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def _legend(draw: ImageDraw.ImageDraw, names: list[str], corner: tuple[float, float], font, text_height: int) -> None:
    """A colour swatch and the name, a line each, from ``corner`` (top left) down."""
    left, top = corner
    for number, (colour, name) in enumerate(zip(PALETTE, names, strict=False)):
        middle = top + (text_height + 10) * number + text_height / 2
        draw.line([(left, middle), (left + SWATCH, middle)], fill=colour, width=4)
        draw.text((left + SWATCH + 8, middle - text_height / 2), name, fill=INK, font=font)


def _centred(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font) -> None:
    width, height = _text_size(draw, text, font)
    draw.text((centre[0] - width / 2, centre[1] - height / 2), text, fill=INK, font=font)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (Pillow >= 10.1, with FreeType)
    except TypeError:  # older Pillow: its small bitmap font
        return ImageFont.load_default()
