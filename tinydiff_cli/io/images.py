"""Writing what a person looks at: sample grids and the loss curve."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import imageio.v3 as iio
import torch
import torch.nn.functional as F

from .atomic import atomic_path


def grid_array(images: torch.Tensor, ncols: int, scale: int = 1, padding: int = 2) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 (rows*(H+p)+p, cols*(W+p)+p) for grey images, with a last axis of 3
    for RGB; image i at row i // ncols, grey (128) between them. The layout of torchvision's make_grid (at most B
    columns; one image alone unpadded), written out: importing torchvision costs a sampling run 1 s (it imports
    torch._dynamo)."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    n, c, h, w = x.shape
    if n == 1:
        grid = x[0]
    else:
        cols = min(ncols, n)
        rows = math.ceil(n / cols)
        x = torch.cat([x, x.new_full((rows * cols - n, c, h, w), 0.5)])
        x = F.pad(x, (padding, 0, padding, 0), value=0.5)  # each image's top and left border
        grid = x.reshape(rows, cols, c, h + padding, w + padding).permute(2, 0, 3, 1, 4)
        grid = F.pad(grid.reshape(c, rows * (h + padding), cols * (w + padding)), (0, padding, 0, padding), value=0.5)
    grid = (grid * 255).round().to(torch.uint8)
    grid = grid[0] if c == 1 else grid.permute(1, 2, 0)
    if scale > 1:  # nearest-neighbour, so pixels stay crisp
        grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, ncols: int, scale: int = 2) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, grid_array(images, ncols, scale).numpy(), extension=".png")
    return path


def save_loss_plot(csv_path: str | Path, png_path: str | Path) -> Path | None:
    """Train loss (per logging window) and eval loss against step, log scale; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["train_loss"]:
                train.append((int(row["step"]), float(row["train_loss"])))
            if row["eval_loss"]:
                evals.append((int(row["step"]), float(row["eval_loss"])))
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss (test split, EMA)", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("weighted MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png_path


def upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """float (..., H, W) -> (..., H*scale, W*scale), nearest neighbour."""
    return images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def trajectory_frames(x: torch.Tensor, x0: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Animation frames: per step, each sample's x_t (left) and predicted x_0 (right), samples stacked.

    x, x0: (F, N, C, H, W) float in [-1, 1] -> uint8 (F, (N*(H+1)-1)*scale, (2W+1)*scale), white gaps; with a last
    axis of 3 for RGB."""
    frames, n, c, h, w = x.shape
    canvas = torch.ones(frames, c, n * (h + 1) - 1, 2 * w + 1)
    for i in range(n):  # a handful of samples; each assignment covers every frame at once
        rows = slice(i * (h + 1), i * (h + 1) + h)
        canvas[:, :, rows, :w] = x[:, i]
        canvas[:, :, rows, w + 1:] = x0[:, i]
    pixels = ((upscale(canvas, scale).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels[:, 0] if c == 1 else pixels.permute(0, 2, 3, 1).contiguous()


def encode_gif(frames: torch.Tensor, seconds_per_frame: float = 0.08, hold_last: int = 15) -> bytes:
    """uint8 (F, H, W) or (F, H, W, 3) -> a looping GIF's bytes; the last frame is held so the result can be
    seen."""
    frames = torch.cat([frames, frames[-1:].expand(hold_last, *frames.shape[1:])])
    return iio.imwrite("<bytes>", frames.numpy(), extension=".gif", duration=int(seconds_per_frame * 1000), loop=0)


def save_gif(frames: torch.Tensor, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_gif(frames, **kwargs))
    return path
