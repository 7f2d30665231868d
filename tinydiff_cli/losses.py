"""The training loss: the Min-SNR-weighted MSE between the network's output and its parameterization's target."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .parameterization import Parameterization, q_sample
from .schedules import Schedule


def draw_noise(schedule: Schedule, shape: torch.Size, device, generator: torch.Generator | None = None):
    """Timesteps, uniform over [0, T), and Gaussian noise for a batch of `shape`, in that order from `generator`."""
    t = torch.randint(0, schedule.T, (shape[0],), device=device, generator=generator)
    return t, torch.randn(shape, device=device, generator=generator)


def diffusion_loss(model, schedule: Schedule, parameterization: Parameterization, x0: torch.Tensor,
                   labels: torch.Tensor, *, min_snr_gamma: float, generator: torch.Generator | None = None,
                   noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Weighted MSE at uniformly drawn t (Ho et al. 2020, Algorithm 1, with the target and weight of the
    parameterization). `noise` = (t, eps) is drawn here unless given (data-parallel training draws it for the
    global batch and passes each rank its rows)."""
    t, eps = noise if noise is not None else draw_noise(schedule, x0.shape, x0.device, generator)
    x_t = q_sample(schedule, x0, t, eps)
    output = model(x_t, t, labels)
    target = parameterization.target(schedule, x0, eps, t)
    per_example = F.mse_loss(output, target, reduction="none").mean(dim=(1, 2, 3))
    return (parameterization.loss_weight(schedule.snr[t], min_snr_gamma) * per_example).mean()
