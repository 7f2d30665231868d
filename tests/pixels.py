"""Reading values back out of the figures tinydiff writes: the images in a matplotlib grid, a curve's height."""
from __future__ import annotations

import numpy as np


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def grey(png: np.ndarray) -> np.ndarray:
    return png[..., :3].astype(float).mean(-1) if png.ndim == 3 else png.astype(float)


def _inside_frame(box: np.ndarray) -> tuple[int, int]:
    """Between the first and the last line of `box` (rows) that is black along nearly its whole length: the inside of
    the 1-px frame matplotlib draws around an axes."""
    black = np.flatnonzero((box <= 1).mean(1) > 0.9)
    return int(black[0]) + 1, int(black[-1])


def grid_images(png: np.ndarray, size: int) -> dict[tuple[int, int], np.ndarray]:
    """The size x size grey images of a figure's grid of image axes, {(row, column): array of 0..255}: each cell found
    as a band of mostly non-white pixels, then sampled at the centres of its `size` pixels."""
    g = grey(png)
    ink = g < 250
    cells = {}
    bands = [(a, b) for a, b in runs(ink.sum(1) > 0.3 * ink.shape[1]) if b - a > size]
    for i, (top, bottom) in enumerate(bands):
        columns = [(a, b) for a, b in runs(ink[top:bottom].sum(0) > 0.5 * (bottom - top)) if b - a > size]
        for j, (left, right) in enumerate(columns):
            box = g[top:bottom, left:right]
            (t, b), (l, r) = _inside_frame(box), _inside_frame(box.T)
            ys = (top + t + (np.arange(size) + 0.5) * (b - t) / size).astype(int)
            xs = (left + l + (np.arange(size) + 0.5) * (r - l) / size).astype(int)
            cells[i, j] = g[np.ix_(ys, xs)]
    return cells


def axes_frames(png: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) pixel lines of each chart's frame, left to right: the black horizontal lines longer
    than a fifth of the figure, paired by column span."""
    g = grey(png)
    spans: dict[tuple[int, int], list[int]] = {}
    for y in range(g.shape[0]):
        for a, b in runs(g[y] < 60):
            if b - a > g.shape[1] / 5:
                spans.setdefault((a, b - 1), []).append(y)
    return sorted((min(ys), max(ys), left, right) for (left, right), ys in spans.items() if len(ys) >= 2)


def curve_height(png: np.ndarray, x: int, colour: tuple[int, int, int], top: int, bottom: int) -> float:
    """The row of a line of `colour` in pixel column x between rows top and bottom (the mean of its pixels)."""
    rgb = png[top:bottom, x, :3].astype(float)
    near = np.flatnonzero(np.abs(rgb - np.array(colour)).sum(1) < 60)
    assert near.size, f"no curve of colour {colour} at x = {x}"
    return top + float(near.mean())


def framed_images(png: np.ndarray, size: int) -> dict[tuple[int, int], np.ndarray]:
    """Like `grid_images`, for images that may hold white pixels (which `grid_images` takes for the background): the
    grid's columns are the black runs longer than 2 * size in the first pixel row that has any (the top edges of the
    first row of frames; no text has such a run), its rows the black runs down the first frame's left edge. Each image
    is sampled at the centres of its size x size pixels between its frame lines; matplotlib draws the frame over the
    image's edge, so only [1:-1, 1:-1] of each is certain to be the image's own pixels."""
    g = grey(png)
    long_runs = lambda line: [(a, b - 1) for a, b in runs(line < 60) if b - a > 2 * size]  # noqa: E731
    first = next(y for y in range(g.shape[0]) if long_runs(g[y]))
    columns = long_runs(g[first])
    rows = long_runs(g[:, columns[0][0]])
    centres = lambda lo, hi: np.floor(lo + (np.arange(size) + 0.5) * (hi - lo) / size).astype(int)  # noqa: E731
    return {(i, j): g[np.ix_(centres(top, bottom), centres(left, right))]
            for i, (top, bottom) in enumerate(rows) for j, (left, right) in enumerate(columns)}
