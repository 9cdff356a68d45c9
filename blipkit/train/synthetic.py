"""A synthetic data set a tiny model learns in minutes: one coloured shape at a position on a plain background, with
a template caption ("a red circle on the left") and one-word answers to questions about it. A seed fixes it.

It is the proof that fine-tuning learns (held-out CIDEr and VQA accuracy from chance to learned) without a data set
to download. Every word is in BERT's uncased vocabulary, so BLIP's tokenizer splits none of them.

    python -m blipkit.train.synthetic OUT_DIR --count N --seed S [--size PX]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
# Where a shape's centre lies, as fractions of the image's width and height, and how a caption says it.
POSITIONS = {
    "left": ((0.25, 0.5), "on the left"),
    "right": ((0.75, 0.5), "on the right"),
    "top": ((0.5, 0.25), "at the top"),
    "bottom": ((0.5, 0.75), "at the bottom"),
    "center": ((0.5, 0.5), "in the center"),
}
QUESTIONS = {"color": "what color is the shape?", "shape": "what shape is it?", "position": "where is the shape?"}
BACKGROUND = (255, 255, 255)
JITTER = 0.06  # how far, as a fraction of the image, a shape's centre and size wander: no two images are equal


@dataclass(frozen=True)
class ShapeSample:
    """One image, its caption, one question about it and the answer, and the attributes they come from."""

    image: Image.Image
    shape: str
    color: str
    position: str
    caption: str
    question: str
    answer: str
    asked: str  # what the question asks: "color", "shape" or "position"


def shapes(count: int, seed: int, size: int = 64) -> list[ShapeSample]:
    """``count`` samples of ``size`` x ``size`` pixels; the same ``seed`` gives the same samples."""
    if count < 1 or size < 16:
        raise ValueError(f"count must be at least 1 and size at least 16 pixels, got count={count}, size={size}")
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        shape, color, position = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(POSITIONS))
        asked = rng.choice(list(QUESTIONS))
        (x, y), phrase = POSITIONS[position]
        centre = ((x + rng.uniform(-JITTER, JITTER)) * size, (y + rng.uniform(-JITTER, JITTER)) * size)
        radius = (0.14 + rng.uniform(-JITTER, JITTER) / 2) * size
        samples.append(
            ShapeSample(
                image=_draw(shape, COLORS[color], centre, radius, size),
                shape=shape,
                color=color,
                position=position,
                caption=f"a {color} {shape} {phrase}",
                question=QUESTIONS[asked],
                answer={"color": color, "shape": shape, "position": position}[asked],
                asked=asked,
            )
        )
    return samples


def _draw(shape: str, fill: tuple[int, int, int], centre: tuple[float, float], radius: float, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "square":
        draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=fill)
    else:  # a triangle pointing up, in the same box as the others
        draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)
    return image


def write_shapes(directory: str | os.PathLike, count: int, seed: int, size: int = 64) -> Path:
    """Write ``shapes(count, seed, size)`` to ``directory``: ``images/NNNNN.png``, ``data.jsonl`` (``id``, ``path``,
    ``caption``, ``question``, ``answer``: what ``blipkit finetune --train`` reads), ``references.jsonl`` (``id``,
    ``captions``: for ``blipkit eval caption --references``) and ``vqa_references.jsonl`` (``id``, ``answers``: the
    answer as ten annotators who agree; ``answer_type``: what the question asks, for ``blipkit eval vqa
    --references``). Returns the ``data.jsonl`` path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows, references, vqa_references = [], [], []
    for number, sample in enumerate(shapes(count, seed, size)):
        key, image = f"{number:05d}", f"images/{number:05d}.png"
        sample.image.save(directory / image)
        rows.append(
            {"id": key, "path": image, "caption": sample.caption, "question": sample.question, "answer": sample.answer}
        )
        references.append({"id": key, "captions": [sample.caption]})
        vqa_references.append({"id": key, "answers": [sample.answer] * 10, "answer_type": sample.asked})
    for name, lines in (("data", rows), ("references", references), ("vqa_references", vqa_references)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return directory / "data.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blipkit.train.synthetic", description="Write the synthetic shapes data set."
    )
    parser.add_argument("out", metavar="OUT_DIR", help="folder for images/, data.jsonl and the references")
    parser.add_argument("--count", type=int, required=True, help="how many images")
    parser.add_argument("--seed", type=int, required=True, help="the same seed writes the same data set")
    parser.add_argument("--size", type=int, default=64, metavar="PX", help="image width and height (default 64)")
    args = parser.parse_args(argv)
    try:
        data = write_shapes(args.out, args.count, args.seed, args.size)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.count} images and {data}")


if __name__ == "__main__":
    main()
