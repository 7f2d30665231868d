"""Samplers: plain functions over tensors with one shared shape of signature.

    sampler(denoise, x, schedule, ..., *, generator=None, callback=None) -> x_0

`denoise(x_t, t)` returns (predicted x_0, predicted eps) (see guidance.guided_denoiser). `callback`, when
given, is called after every step with a dict (i, steps, t, x, x0) and feeds progress bars and GIF frames.
"""
from __future__ import annotations

import torch

from .schedules import Schedule

SAMPLERS = ("ddpm", "ddim")


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


@torch.no_grad()
def ddpm_sample(denoise, x, schedule: Schedule, *, generator=None, callback=None):
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2, with the posterior of eq. 7)."""
    T = schedule.T
    for i, t in enumerate(range(T - 1, -1, -1)):
        x0, _ = denoise(x, _batch_t(t, x))
        mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x
        x = mean + schedule.posterior_variance[t].sqrt() * _noise_like(x, generator) if t > 0 else mean
        if callback is not None:
            callback({"i": i, "steps": T, "t": t, "x": x, "x0": x0})
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 downwards, evenly spaced and ending near 0 ("trailing" spacing,
    Lin et al. 2024, table 2), so that even one step starts from pure noise at t = T-1."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be between 1 and T={T}, got {steps}")
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def ddim_sigma(alpha_bar, alpha_bar_prev, eta: float):
    """Song et al. eq. 16: sigma_t(eta); eta = 1 gives DDPM's posterior standard deviation."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()


@torch.no_grad()
def ddim_sample(denoise, x, schedule: Schedule, steps: int, *, eta: float = 0.0, generator=None, callback=None):
    """DDIM (Song et al. 2021, eq. 12) over `steps` timesteps; eta = 0 is deterministic, eta = 1 is
    DDPM's posterior variance. The previous timestep is read from the step list; the last step lands on x_0."""
    timesteps = ddim_timesteps(schedule.T, steps)
    for i, t in enumerate(timesteps):
        x0, eps = denoise(x, _batch_t(t, x))
        alpha_bar = schedule.alpha_bar[t]
        alpha_bar_prev = schedule.alpha_bar[timesteps[i + 1]] if i + 1 < steps else torch.ones_like(alpha_bar)
        sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
        # eq. 12: predicted x_0, "direction pointing to x_t", random noise
        x = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < steps:
            x = x + sigma * _noise_like(x, generator)
        if callback is not None:
            callback({"i": i, "steps": steps, "t": t, "x": x, "x0": x0})
    return x
