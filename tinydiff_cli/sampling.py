"""Generating images from a trained model: the entry points the CLI, training previews, `compare`,
`visualize denoise` and the app share, so there is one sampling path."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .guidance import guided_denoiser
from .samplers import ddim_sample, ddpm_sample
from .schedules import Schedule


def default_batch_size(device) -> int:
    """Images per sampling batch. On CPU, batches past ~100 (200 rows with guidance) fall out of cache and
    get slower per image (benchmarks/sampling_batch.py); accelerators want large batches."""
    return 100 if torch.device(device).type == "cpu" else 1000


def make_generator(seed: int, device) -> torch.Generator:
    device = torch.device(device)
    return torch.Generator(device=device).manual_seed(seed)


def run_sampler(model, schedule: Schedule, objective: str, labels: torch.Tensor, x: torch.Tensor, *,
                ddim_steps: int | None, eta: float, w: float, generator, callback=None) -> torch.Tensor:
    """Denoise the noise `x` for `labels` with DDPM (ddim_steps None) or DDIM; everything on x's device."""
    denoise = guided_denoiser(model, schedule, objective, labels, getattr(model, "num_classes", 10), w=w)
    if ddim_steps is None:
        return ddpm_sample(denoise, x, schedule, generator=generator, callback=callback)
    return ddim_sample(denoise, x, schedule, ddim_steps, eta=eta, generator=generator, callback=callback)


@torch.no_grad()
def sample_images(model, schedule: Schedule, objective: str, labels: torch.Tensor, *, ddim_steps: int | None = None,
                  eta: float = 0.0, w: float = 0.0, seed: int = 0, batch_size: int | None = None,
                  image_shape=(1, 28, 28), callback=None) -> torch.Tensor:
    """Samples for `labels` (the model's null class = unconditional) in batches; float (N, C, H, W) on CPU.

    ddim_steps None means DDPM over all T steps; `callback` is passed to the sampler for per-step progress.
    All initial noise is drawn first from the seeded generator, so every sampler run with the same seed
    starts from the same noise, whatever the batch size.
    """
    device = next(model.parameters()).device
    batch_size = batch_size or default_batch_size(device)
    schedule = schedule.to(device)
    generator = make_generator(seed, device)
    noise = torch.randn((labels.shape[0], *image_shape), device=device, generator=generator)
    out = []
    for start in range(0, labels.shape[0], batch_size):
        batch_labels = labels[start:start + batch_size].to(device)
        out.append(run_sampler(model, schedule, objective, batch_labels, noise[start:start + batch_size], ddim_steps=ddim_steps,
                               eta=eta, w=w, generator=generator, callback=callback).cpu())
    return torch.cat(out)


@dataclass
class Trajectory:
    """The reverse process, step by step: x[0] is the initial noise, x[i + 1] and x0[i] come from step i."""

    timesteps: list[int]
    x: torch.Tensor  # (steps + 1, N, C, H, W), CPU
    x0: torch.Tensor  # (steps, N, C, H, W), CPU
    alpha_bar: list[float]  # at each step's t
    log_snr: list[float]
    seconds: float


@torch.no_grad()
def denoise_trajectory(model, schedule: Schedule, objective: str, labels: torch.Tensor, *, ddim_steps: int | None = None,
                       eta: float = 0.0, w: float = 0.0, seed: int = 0, image_shape=(1, 28, 28)) -> Trajectory:
    """Sample one batch and keep every step; its final frame equals `sample_images` with the same arguments."""
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    generator = make_generator(seed, device)
    x = torch.randn((labels.shape[0], *image_shape), device=device, generator=generator)
    frames, predictions, timesteps = [x.cpu()], [], []

    def record(info):
        frames.append(info["x"].cpu())
        predictions.append(info["x0"].cpu())
        timesteps.append(info["t"])

    start = time.perf_counter()
    run_sampler(model, schedule, objective, labels.to(device), x, ddim_steps=ddim_steps, eta=eta, w=w,
                generator=generator, callback=record)
    seconds = time.perf_counter() - start
    ts = torch.tensor(timesteps)
    return Trajectory(timesteps, torch.stack(frames), torch.stack(predictions),
                      schedule.alpha_bar.cpu()[ts].tolist(), schedule.log_snr.cpu()[ts].tolist(), seconds)


def labels_for(digit: str | int | None, n: int, num_classes: int = 10) -> torch.Tensor:
    """"all" cycles 0..num_classes-1 (so a grid with num_classes columns has one class per column),
    an int repeats that class, None/"none" gives the null class (unconditional)."""
    if digit is None or digit == "none":
        return torch.full((n,), num_classes, dtype=torch.long)
    if digit == "all":
        return torch.arange(n, dtype=torch.long) % num_classes
    return torch.full((n,), int(digit), dtype=torch.long)
