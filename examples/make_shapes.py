"""A small colour image folder to try `--dataset PATH` on: circles, squares and triangles in class subfolders.

    python examples/make_shapes.py shapes --per-class 2000
    tinydiff train --preset unet-rgb32 --dataset shapes --max-minutes 10

Each image is 32x32 RGB: one shape of a random colour, size and position on a plain background of another colour,
drawn with Pillow at 4x and downsampled (antialiased edges). The same seed gives the same folder.
"""
from __future__ import annotations

import argparse
import colorsys
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def random_colour(rng: random.Random, lightness: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(rng.random(), rng.uniform(*lightness), rng.uniform(0.5, 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def draw(shape: str, rng: random.Random, size: int = 32, oversample: int = 4) -> Image.Image:
    """One image: a light shape on a dark background or the other way round, so that both contrast."""
    light_shape = rng.random() < 0.5
    fg = random_colour(rng, (0.55, 0.75) if light_shape else (0.2, 0.4))
    bg = random_colour(rng, (0.15, 0.3) if light_shape else (0.7, 0.85))
    big = size * oversample
    image = Image.new("RGB", (big, big), bg)
    pen = ImageDraw.Draw(image)
    radius = rng.uniform(0.18, 0.38) * big
    cx, cy = (rng.uniform(radius, big - radius) for _ in range(2))
    if shape == "circle":
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fg)
    elif shape == "square":
        pen.regular_polygon((cx, cy, radius), 4, rotation=rng.uniform(0, 90), fill=fg)
    else:
        pen.regular_polygon((cx, cy, radius), 3, rotation=rng.uniform(0, 120), fill=fg)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for shape in CLASSES:
        folder = args.out / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            draw(shape, rng, args.size).save(folder / f"{i:05d}.png")
    print(f"{len(CLASSES) * args.per_class} images in {args.out}/{{{','.join(CLASSES)}}}")


if __name__ == "__main__":
    main()
