"""`tinydiff visualize forward|schedule|denoise`."""
from __future__ import annotations

from pathlib import Path

from ..data.load import load_dataset
from ..data.datasets import to_model_range
from ..errors import TinydiffError
from ..diffusion.schedules import SCHEDULES
from .ui import console, where
from ..sampling.visualize import write_denoise_outputs, write_forward_figure, write_schedule_figure
from .common import SamplingOptions, load_pipeline, open_checkpoint, parse_digit


def parse_timesteps(text: str, T: int = 1000) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TinydiffError(f"--timesteps must be comma-separated integers like 0,100,500,999, got '{text}'") from None
    if not steps or any(not 0 <= t < T for t in steps):
        raise TinydiffError(f"--timesteps must lie in 0..{T - 1}, got '{text}'")
    return steps


def run_forward(*, dataset: str, data_dir, n: int, schedule: str, timesteps: str, seed: int, out: Path) -> None:
    if schedule not in SCHEDULES:
        raise TinydiffError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    if not 1 <= n <= 64:
        raise TinydiffError(f"--n must be between 1 and 64 rows, got {n}")
    steps = parse_timesteps(timesteps)
    data = load_dataset(dataset, data_dir)
    write_forward_figure(to_model_range(data.test.images[:n]), schedule, steps, out, seed=seed)
    console.print(f"forward process of {n} {data.info.label} test images at t = {', '.join(map(str, steps))} "
                  f"({schedule} schedule) -> {where(out)}")


def run_schedule(*, out: Path, T: int) -> None:
    if T < 20:
        raise TinydiffError("--T must be at least 20")
    write_schedule_figure(out, T)
    console.print(f"alpha_bar_t and log-SNR for {', '.join(SCHEDULES)} (T={T}) -> {where(out)}")


def run_denoise(*, checkpoint: Path | None, digit: str | None, n: int, options: SamplingOptions, out: Path,
                device: str) -> None:
    ckpt = open_checkpoint(checkpoint)
    if digit is None:
        digit = "3" if ckpt.data.num_classes > 3 else "all"
    choice = parse_digit(digit, ckpt.data.class_names)
    if n < 1:
        raise TinydiffError("--n and --batch-size must be at least 1")
    if n > 16:
        raise TinydiffError(f"--n must be at most 16 for an animation, got {n}")
    plan = options.plan(ckpt)
    pipe = load_pipeline(ckpt, device)
    traj = pipe.trajectory(pipe.labels(choice, n), plan, seed=options.seed)
    sampler = plan.label
    what = "unconditional" if choice == "none" or not pipe.num_classes else "classes cycling" if choice == "all" else f"class {pipe.class_names[choice]}"
    title = f"reverse process, {sampler}, {plan.guidance}, {what}: x_t (top) and the model's predicted x_0 (bottom)"
    gif, strip, frames = write_denoise_outputs(traj, out.with_suffix(".gif"), out.with_suffix(".png"), title)
    console.print(f"{sampler} took {traj.seconds:.2f} s; animation ({frames} frames) -> {where(gif)}; strip -> {where(strip)}")
