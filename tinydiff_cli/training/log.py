"""What a training run reports: the progress reporter protocol, the loss window, and loss.csv."""
from __future__ import annotations

import csv
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io.atomic import storage_errors

CSV_FIELDS = ["step", "epoch", "train_loss", "eval_loss", "lr", "images_per_s", "elapsed_s", "fid", "fid_n", "class_acc"]


class PrintReporter:
    """The engine's default progress output; the CLI passes a Rich one with the same methods."""

    def start(self, total_steps: int, step: int, description: str = "train") -> None:
        print(f"{description}: steps {step}..{total_steps}")

    def update(self, step: int, metrics: dict | None) -> None:
        """Called every step; `metrics` (loss, lr, images_per_s, eta_s, elapsed_s) every train.log_every steps."""

    def log(self, message: str) -> None:
        print(message)

    def loading(self, done: int, total: int) -> None:
        """Called while a folder of images is decoded (see folders.decode_all)."""
        if done == total:
            print(f"decoded {total} images")

    def finish(self) -> None:
        pass


class QuietReporter(PrintReporter):
    """Progress output of a data-parallel rank other than 0: none."""

    def start(self, total_steps: int, step: int, description: str = "train") -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def loading(self, done: int, total: int) -> None:
        pass


class NullLog:
    """loss.csv on a rank other than 0: written by rank 0 alone."""

    def write(self, **row) -> None:
        pass

    def __enter__(self) -> "NullLog":
        return self

    def __exit__(self, *exc) -> None:
        pass


class LossWindow:
    """Sums the loss on the device and counts images between log points, so that the host waits for the
    device once per window instead of once per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.loss, self.steps, self.images, self.start = torch.zeros((), device=self.device), 0, 0, now

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.steps += 1
        self.images += images

    @contextmanager
    def paused(self):
        """Time spent inside (checkpoints, evals, previews) is not training throughput."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - start

    def close(self, reduce=None) -> tuple[float, float]:
        """(mean loss, images/s) of the window, and start the next one. `reduce(loss_sum, images)` combines the
        window over data-parallel ranks (see Trainer.window_reduce)."""
        now = time.perf_counter()
        loss, images = (self.loss, self.images) if reduce is None else reduce(self.loss, self.images)
        result = (loss / max(self.steps, 1)).item(), images / max(now - self.start, 1e-9)
        self.reset(now)
        return result


class TrainLog:
    """loss.csv: one row per log window, per epoch's eval loss and per sample-quality eval. Opening it for a
    resumed run drops the rows written after the checkpoint being resumed, so none is duplicated."""

    def __init__(self, path: Path, resume_step: int = 0):
        rows, self.path = [], Path(path)
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with storage_errors(path):
            self.file = open(path, "w", newline="", buffering=1)
            self.writer = csv.DictWriter(self.file, fieldnames=CSV_FIELDS)
            self.writer.writeheader()
            self.writer.writerows(rows)

    def write(self, *, step: int, epoch: float, lr: float, images_per_s: float, elapsed_s: float,
              train_loss: float | None = None, eval_loss: float | None = None, score=None) -> None:
        """One row; `score` (an evaluation.Score) fills fid, fid_n and class_acc."""
        row = {"step": step, "epoch": f"{epoch:.3f}", "lr": f"{lr:.3e}", "images_per_s": f"{images_per_s:.1f}",
               "elapsed_s": f"{elapsed_s:.1f}"}
        if train_loss is not None:
            row["train_loss"] = f"{train_loss:.6f}"
        if eval_loss is not None:
            row["eval_loss"] = f"{eval_loss:.6f}"
        if score is not None:
            row.update(fid=f"{score.fid:.4f}", fid_n=score.n,
                       class_acc="" if score.class_accuracy is None else f"{score.class_accuracy:.4f}")
        with storage_errors(self.path):
            self.writer.writerow(row)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the disk filled: the error that stopped the run has been raised already
            pass

    def __enter__(self) -> "TrainLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
