"""Generating images from a trained model: the one entry point the CLI, training previews and later
tools (compare, visualize) share."""
from __future__ import annotations

import torch

from .guidance import guided_denoiser
from .samplers import ddim_sample, ddpm_sample
from .schedules import Schedule


def make_generator(seed: int, device) -> torch.Generator:
    device = torch.device(device)
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample_images(model, schedule: Schedule, objective: str, labels: torch.Tensor, *, ddim_steps: int | None = None,
                  eta: float = 0.0, w: float = 0.0, seed: int = 0, batch_size: int = 256,
                  image_shape=(1, 28, 28), on_batch=None, callback=None) -> torch.Tensor:
    """Samples for `labels` (the model's null class = unconditional) in batches; float (N, C, H, W) on CPU.

    ddim_steps None means DDPM over all T steps. `on_batch(done, total)` reports progress between batches;
    `callback` is passed to the sampler for per-step progress.
    """
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    generator = make_generator(seed, device)
    null_class = getattr(model, "num_classes", 10)
    out = []
    for start in range(0, labels.shape[0], batch_size):
        batch_labels = labels[start:start + batch_size].to(device)
        x = torch.randn((batch_labels.shape[0], *image_shape), device=device, generator=generator)
        denoise = guided_denoiser(model, schedule, objective, batch_labels, null_class, w=w)
        if ddim_steps is None:
            x = ddpm_sample(denoise, x, schedule, generator=generator, callback=callback)
        else:
            x = ddim_sample(denoise, x, schedule, ddim_steps, eta=eta, generator=generator, callback=callback)
        out.append(x.cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, labels.shape[0]), labels.shape[0])
    return torch.cat(out)


def labels_for(digit: str | int | None, n: int, num_classes: int = 10) -> torch.Tensor:
    """"all" cycles 0..num_classes-1 (so a grid with num_classes columns has one class per column),
    an int repeats that class, None/"none" gives the null class (unconditional)."""
    if digit is None or digit == "none":
        return torch.full((n,), num_classes, dtype=torch.long)
    if digit == "all":
        return torch.arange(n, dtype=torch.long) % num_classes
    return torch.full((n,), int(digit), dtype=torch.long)
