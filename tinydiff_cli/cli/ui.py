"""Rich output for the CLI: the training progress reporter and small formatting helpers."""
from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

# soft_wrap: long lines (paths) are not broken at the terminal width, so they stay copyable and greppable
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def print_key_values(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column summary: a table on a terminal; elsewhere (a log file, `| tee`) `key: value` lines, because a
    table is drawn at 80 columns there and would cut long values such as paths."""
    if console.is_terminal:
        table = Table(title=title, show_header=False)
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
    else:
        console.print("\n".join([title] + [f"  {key}: {value}" for key, value in rows]), markup=False, highlight=False)


def format_rate(n: int, seconds: float) -> str:
    """'12.3 images/s', or '4.2 s/image' when that would round to 0.0 images/s."""
    rate = n / max(seconds, 1e-9)
    return f"{rate:.1f} images/s" if rate >= 1 else f"{seconds / max(n, 1):.1f} s/image"


def where(path) -> str:
    """A path the user asked for (or got by default), absolute, so that it is clear where the file landed."""
    from pathlib import Path

    return str(Path(path).resolve())


class RichReporter:
    """Progress bar with live loss, learning rate, images/s, elapsed time and ETA (the engine's Reporter protocol).

    `elapsed` is the trainer's own clock (for `train`, the whole run across resumes: the figure the summary and the
    checkpoint report). When the output is not a terminal (CI logs, `| tee`), there is no bar: a plain line is printed
    every `plain_every_s` and once at the end, never cut at a width.
    """

    def __init__(self, plain_every_s: float = 30.0):
        self.plain_every_s, self.last_plain = plain_every_s, time.monotonic()
        self.plain = not console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} img/s"), TextColumn("elapsed {task.fields[elapsed]}"),
            TextColumn("ETA {task.fields[eta]}"), console=console, transient=False, disable=self.plain)
        self.task, self.step, self.fields = None, 0, {}

    def start(self, total_steps: int, step: int, description: str = "train") -> None:
        """A new bar (one per stage, for `distill`)."""
        self.progress.start()
        self.fields = dict(loss="-", lr="-", speed="-", elapsed="-", eta="-")
        self.description, self.total, self.step = description, total_steps, step
        self.task = self.progress.add_task(description, total=total_steps, completed=step, **self.fields)

    def update(self, step: int, metrics: dict | None) -> None:
        self.step = step
        if metrics:
            self.fields = dict(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                               speed=f"{metrics['images_per_s']:.0f}", eta=format_seconds(metrics["eta_s"]),
                               elapsed=format_seconds(metrics["elapsed_s"]) if "elapsed_s" in metrics else "-")
            self.progress.update(self.task, completed=step, **self.fields)
        else:
            self.progress.update(self.task, completed=step)
        if metrics and self.plain and time.monotonic() - self.last_plain >= self.plain_every_s:
            self.print_plain()

    def print_plain(self) -> None:
        self.last_plain = time.monotonic()
        f = self.fields
        console.print(f"{self.description}: step {self.step}/{self.total}  loss {f['loss']}  lr {f['lr']}  "
                      f"{f['speed']} img/s  elapsed {f['elapsed']}  ETA {f['eta']}", highlight=False)

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)

    def loading(self, done: int, total: int) -> None:
        """Decoding a folder of images: a bar of its own on a terminal (gone when done), else one line at the end."""
        if self.plain:
            if done == total:
                console.print(f"decoded {total:,} images", highlight=False)
            return
        if getattr(self, "_loading", None) is None:
            self._loading = Progress(TextColumn("[bold]decode images"), BarColumn(), MofNCompleteColumn(),
                                     console=console, transient=True)
            self._loading.start()
            self._loading_task = self._loading.add_task("decode", total=total)
        self._loading.update(self._loading_task, completed=done)
        if done == total:
            self._loading.stop()
            self._loading = None

    def finish(self) -> None:
        self.progress.stop()
        if self.plain and self.fields.get("loss", "-") != "-":
            self.print_plain()  # where the bar ended, in full
