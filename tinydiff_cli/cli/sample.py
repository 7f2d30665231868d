"""`tinydiff sample`: load a checkpoint, generate, write a grid PNG and optionally an .npz."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..io.atomic import atomic_path
from ..data.datasets import to_uint8
from ..runtime.device import describe
from ..errors import TinydiffError
from ..io.images import save_grid
from ..sampling.pipeline import default_batch_size
from ..runtime.precision import prepare, resolve_precision
from .ui import console, format_rate, where
from .common import SamplingOptions, check_at_most_max_images, check_output, load_pipeline, open_checkpoint, parse_digit


def run_sample(*, checkpoint: Path | None, digit: str, n: int, options: SamplingOptions, out: Path, npz: Path | None,
               device: str, weights: str, precision: str = "auto", compile: bool = False) -> None:
    check_at_most_max_images(n)
    ckpt = open_checkpoint(checkpoint)
    choice = parse_digit(digit, ckpt.data.class_names)
    if n < 1:
        raise TinydiffError("--n and --batch-size must be at least 1")
    plan = options.plan(ckpt)
    check_output(out, npz)
    pipe = load_pipeline(ckpt, device, weights)
    precision = resolve_precision(precision, pipe.device)
    pipe.model = prepare(pipe.model, precision, compile)
    labels = pipe.labels(choice, n)
    console.print(f"checkpoint {ckpt.json_path} (step {ckpt.step}, {'EMA' if weights == 'ema' else 'raw'} weights); "
                  f"{plan.description}, {plan.guidance}, device {describe(pipe.device)}, "
                  f"{precision}" + (", compiled" if compile else ""))

    batches = math.ceil(n / (options.batch_size or default_batch_size(pipe.device)))
    with Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("sample", total=batches * plan.steps)
        start = time.perf_counter()
        images = pipe.sample(labels, plan, seed=options.seed, batch_size=options.batch_size,
                             callback=lambda info: bar.advance(task))
        seconds = time.perf_counter() - start
    save_grid(images, out, ncols=pipe.num_classes if choice == "all" and pipe.num_classes else math.ceil(math.sqrt(n)))
    console.print(f"sampled {n} images in {seconds:.2f} s ({format_rate(n, seconds)}); grid -> {where(out)}")
    if npz is not None:
        arrays = to_uint8(images).numpy()
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=arrays, arr_1=labels.numpy().astype(np.int64))
        console.print(f"arrays -> {where(npz)} (arr_0 uint8 {arrays.shape}, arr_1 int64 labels)")
