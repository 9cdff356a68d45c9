"""A CapFilt run as one self-contained HTML page: counts kept and removed per source, ITM score histograms, and
the best- and worst-matching pairs with thumbnails - a filter is judged by looking at what it keeps and drops."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path
from typing import Any

from blipkit.jobs.sources import Item
from blipkit.processing.image import load_image

BINS = 10  # histogram bins over the ITM probability, 0 to 1
EXAMPLES = 8  # best and worst pairs shown
THUMBNAIL = 160  # pixels, the longer side


def write_report(rows: list[dict[str, Any]], items: dict[str, Item], path: Path) -> None:
    """Write the page for CapFilt ``rows`` (``items`` by id give the thumbnails) to ``path``."""
    scored = [row for row in rows if row.get("status") == "ok" and row.get("itm") not in (None, "")]
    for row in scored:
        row["itm"], row["itc"] = float(row["itm"]), float(row["itc"])
        row["kept"] = row["kept"] in (True, "True")
    failed = len({row["id"] for row in rows if row.get("status") == "failed"})
    ranked = sorted(scored, key=lambda row: row["itm"], reverse=True)
    sections = [
        f"<h1>CapFilt report</h1><p>{len({r['id'] for r in scored})} images, {len(scored)} captions, "
        f"{failed} images failed.</p>",
        _counts_table(scored),
        *(_histogram(source, [r["itm"] for r in scored if r["source"] == source]) for source in _sources(scored)),
        _examples("Best matches", ranked[:EXAMPLES], items),
        _examples("Worst matches", ranked[::-1][:EXAMPLES], items),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>CapFilt report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
    "padding:4px 8px;text-align:left}.bar{fill:#4a7}figure{display:inline-block;width:180px;margin:6px;"
    "vertical-align:top}figcaption{font-size:12px}"
)


def _sources(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({row["source"] for row in rows})


def _counts_table(rows: list[dict[str, Any]]) -> str:
    counts = Counter((row["source"], row["kept"]) for row in rows)
    lines = "".join(
        f"<tr><td>{html.escape(source)}</td><td>{counts[source, True]}</td><td>{counts[source, False]}</td></tr>"
        for source in _sources(rows)
    )
    return f"<h2>Kept and removed</h2><table><tr><th>source</th><th>kept</th><th>removed</th></tr>{lines}</table>"


def _histogram(source: str, scores: list[float]) -> str:
    """An inline SVG bar chart of ``scores`` in ``BINS`` bins over [0, 1]."""
    counts = [0] * BINS
    for score in scores:
        counts[min(int(score * BINS), BINS - 1)] += 1
    tallest = max(counts) or 1
    bars = "".join(
        f'<rect class="bar" x="{i * 30 + 2}" y="{100 - 100 * c / tallest:.1f}" width="26" '
        f'height="{100 * c / tallest:.1f}"><title>{i / BINS:.1f}-{(i + 1) / BINS:.1f}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return (
        f"<h2>ITM probability, {html.escape(source)} captions</h2>"
        f'<svg width="{BINS * 30}" height="104" role="img" aria-label="histogram">{bars}</svg>'
    )


def _examples(title: str, rows: list[dict[str, Any]], items: dict[str, Item]) -> str:
    figures = "".join(
        f"<figure>{_thumbnail(items.get(row['id']))}<figcaption>{html.escape(str(row['caption']))}<br>"
        f"{row['source']}, ITM {row['itm']:.3f}, ITC {row['itc']:.3f}, {'kept' if row['kept'] else 'removed'}"
        "</figcaption></figure>"
        for row in rows
    )
    return f"<h2>{title}</h2>{figures}"


def _thumbnail(item: Item | None) -> str:
    """The image as an embedded JPEG, or a note where it cannot be read."""
    if item is None:
        return "<p>(image not among the inputs)</p>"
    try:
        image = load_image(item.image)
    except Exception as error:  # the page still renders; it says what went wrong
        return f"<p>(cannot read the image: {html.escape(str(error))})</p>"
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
