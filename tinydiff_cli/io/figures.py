"""Labelled figures (matplotlib, Agg backend): image grids with titled columns, schedule charts,
trajectory strips. Every writer saves atomically and returns the path."""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white")
    plt.close(fig)
    return path


def _show(ax, image: torch.Tensor) -> None:
    """One float [-1, 1] image (C, H, W), grey or RGB, pixels kept sharp."""
    pixels = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_table(columns: list[tuple[str, torch.Tensor]], path: str | Path, row_labels: list[str] | None = None,
                title: str | None = None, cell_inches: float = 0.9) -> Path:
    """A table of images: column j is `columns[j] = (heading, images (R, C, H, W))`, row i across all columns."""
    plt = _pyplot()
    rows = columns[0][1].shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(cell_inches * len(columns) + 0.6, cell_inches * rows + 0.6),
                             squeeze=False, dpi=100)
    for j, (heading, images) in enumerate(columns):
        axes[0, j].set_title(heading, fontsize=8)
        for i in range(rows):
            _show(axes[i, j], images[i])
    for i, label in enumerate(row_labels or []):
        axes[i, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def schedule_chart(schedules: dict, path: str | Path) -> Path:
    """alpha_bar_t and log-SNR(t) of each named schedule, side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, schedule in schedules.items():
        t = torch.arange(schedule.T).numpy()
        left.plot(t, schedule.alpha_bar.numpy(), label=name)
        right.plot(t, schedule.log_snr.numpy(), label=name)
    left.set(title="signal kept: alpha_bar_t", xlabel="timestep t", ylabel="alpha_bar_t")
    right.set(title="log-SNR(t) = log(alpha_bar / (1 - alpha_bar))", xlabel="timestep t", ylabel="log-SNR")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def trajectory_strip(x: torch.Tensor, x0: torch.Tensor, labels: list[str], path: str | Path, title: str) -> Path:
    """Two rows per sample, x_t above the model's predicted x_0, one labelled column per chosen step.

    x, x0: (K, N, C, H, W) for K chosen steps."""
    plt = _pyplot()
    k, n = x.shape[0], x.shape[1]
    fig, axes = plt.subplots(2 * n, k, figsize=(0.95 * k + 0.8, 1.0 * 2 * n + 0.7), squeeze=False, dpi=100)
    for j in range(k):
        axes[0, j].set_title(labels[j], fontsize=7)
        for i in range(n):
            _show(axes[2 * i, j], x[j, i])
            _show(axes[2 * i + 1, j], x0[j, i])
    for i in range(n):
        axes[2 * i, 0].set_ylabel("x_t", fontsize=8, rotation=0, ha="right", va="center")
        axes[2 * i + 1, 0].set_ylabel("pred x_0", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def frontier_chart(results: list[dict], path: str | Path, title: str) -> Path:
    """FID against network evaluations per image (left) and against seconds per 1,000 images (right), one line per
    sampler family (the rows of `tinydiff compare`: family, sampler, network_evaluations, ms_per_image, fid)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    families = list(dict.fromkeys(r["family"] for r in results))
    for family in families:
        rows = sorted((r for r in results if r["family"] == family), key=lambda r: r["network_evaluations"])
        for ax, key in ((axes[0], "network_evaluations"), (axes[1], "ms_per_image")):  # ms/image = s per 1,000
            xs = [r[key] for r in rows]
            ax.plot(xs, [r["fid"] for r in rows], marker="o", label=family)
            for x, r in zip(xs, rows):
                ax.annotate(r["sampler"].rsplit("-", 1)[-1], (x, r["fid"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    axes[0].set(xlabel="network evaluations per image (log)", ylabel="FID (lower is better)")
    axes[1].set(xlabel="seconds per 1,000 images (log)", ylabel="FID (lower is better)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.axhline(results[0]["fid_real_floor"], color="grey", linestyle=":", label="real-data floor")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
