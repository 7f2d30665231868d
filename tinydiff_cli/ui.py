"""Rich output for the CLI: the training progress reporter and small formatting helpers."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# soft_wrap: long lines (paths) are not broken at the terminal width, so they stay copyable and greppable
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class RichReporter:
    """Progress bar with live loss, learning rate, images/s and ETA (the engine's Reporter protocol).

    When the output is not a terminal (CI logs, `| tee`), a plain line is printed every `plain_every_s` instead.
    """

    def __init__(self, plain_every_s: float = 30.0):
        self.plain_every_s, self.last_plain = plain_every_s, time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} img/s"), TextColumn("elapsed"), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"), console=console, transient=False)
        self.task = None

    def start(self, total_steps: int, step: int, description: str = "train") -> None:
        """A new bar (one per stage, for `distill`)."""
        self.progress.start()
        self.task = self.progress.add_task(description, total=total_steps, completed=step,
                                           loss="-", lr="-", speed="-", eta="-")

    def update(self, step: int, metrics: dict | None) -> None:
        fields = {}
        if metrics:
            fields = dict(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                          speed=f"{metrics['images_per_s']:.0f}", eta=format_seconds(metrics["eta_s"]))
        self.progress.update(self.task, completed=step, **fields)
        if metrics and not console.is_terminal and time.monotonic() - self.last_plain >= self.plain_every_s:
            self.last_plain = time.monotonic()
            task = next(t for t in self.progress.tasks if t.id == self.task)
            total = task.total
            console.print(f"{task.description}: step {step}/{total}  loss {fields['loss']}  lr {fields['lr']}  {fields['speed']} img/s  "
                          f"ETA {fields['eta']}", highlight=False)

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)

    def finish(self) -> None:
        self.progress.stop()
