"""`tinydiff sample`: load a checkpoint, generate, write a grid PNG and optionally an .npz."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..atomic import atomic_path
from ..checkpoint import find_latest_checkpoint, load_checkpoint, load_model
from ..data import to_uint8
from ..device import describe, pick_device
from ..errors import TinydiffError
from ..images import save_grid
from ..sampling import default_batch_size, labels_for, sample_images
from ..schedules import make_schedule
from ..ui import console


def parse_digit(digit: str, num_classes: int) -> str | int | None:
    if digit in ("all", "none"):
        return digit
    if digit.isdigit() and 0 <= int(digit) < num_classes:
        return int(digit)
    raise TinydiffError(f"--digit must be 0..{num_classes - 1}, 'all' or 'none', got '{digit}'")


def check_output(*paths: Path | None) -> None:
    """Fail before the expensive part, not after it."""
    for path in paths:
        if path is not None and path.is_dir():
            raise TinydiffError(f"{path} is a folder; give a file name such as {path / 'samples.png'}")


def check_args(n: int, ddim: int | None, eta: float, T: int, batch_size: int) -> None:
    if n < 1 or (batch_size is not None and batch_size < 1):
        raise TinydiffError("--n and --batch-size must be at least 1")
    if ddim is not None and not 1 <= ddim <= T:
        raise TinydiffError(f"--ddim must be between 1 and the model's T={T}, got {ddim}")
    if not 0 <= eta <= 1:
        raise TinydiffError(f"--eta must be in [0, 1], got {eta}")


def run_sample(checkpoint, digit, n, ddim, eta, w, seed, out: Path, npz: Path | None, batch_size, device, use_ema) -> None:
    ckpt = load_checkpoint(checkpoint or find_latest_checkpoint("runs"))
    cfg = ckpt.config
    num_classes = ckpt.meta.get("data", {}).get("num_classes", 10)
    label_choice = parse_digit(digit, num_classes)
    check_args(n, ddim, eta, cfg.diffusion.timesteps, batch_size)
    check_output(out, npz)
    dev = pick_device(device)
    model = load_model(ckpt, dev, use_ema=use_ema)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    labels = labels_for(label_choice, n, num_classes)
    sampler = f"DDIM-{ddim} (eta={eta:g})" if ddim else f"DDPM-{cfg.diffusion.timesteps}"
    console.print(f"checkpoint {ckpt.json_path} (step {ckpt.step}, {'EMA' if use_ema else 'raw'} weights); "
                  f"{sampler}, w={w:g}, device {describe(dev)}")

    steps = ddim or cfg.diffusion.timesteps
    batch_size = batch_size or default_batch_size(dev)
    with Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("sample", total=math.ceil(n / batch_size) * steps)
        start = time.perf_counter()
        images = sample_images(model, schedule, cfg.diffusion.objective, labels, ddim_steps=ddim, eta=eta, w=w,
                               seed=seed, batch_size=batch_size, callback=lambda info: bar.advance(task))
        seconds = time.perf_counter() - start
    ncols = num_classes if label_choice == "all" else math.ceil(math.sqrt(n))
    save_grid(images, out, ncols=ncols)
    console.print(f"sampled {n} images in {seconds:.2f} s ({n / seconds:.1f} images/s); grid -> {out}")
    if npz is not None:
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=to_uint8(images).numpy(), arr_1=labels.numpy().astype(np.int64))
        console.print(f"arrays -> {npz} (arr_0 uint8 {tuple(images.shape[0:1]) + (28, 28, 1)}, arr_1 int64 labels)")
