"""Samplers: plain functions over tensors, one shared signature, one registry.

    sampler(denoise, x, schedule, timesteps, *, generator=None, callback=None, ...) -> x_0

`denoise(x_t, t)` returns (predicted x_0, predicted eps) (see guidance.guided_denoiser). `timesteps` is the
descending grid from `sampler_timesteps`; each step reads its successor from it, and the last lands on x_0.
`callback`, when given, is called after every step with a dict (i, steps, t, x, x0): progress bars, GIF frames.
Options beyond the shared ones (such as DDIM's eta) are keyword-only with defaults.

Adding a sampler means writing its function and adding it to SAMPLERS; the CLI's choices come from there.
"""
from __future__ import annotations

import inspect

import torch

from .schedules import Schedule


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


@torch.no_grad()
def ddpm_sample(denoise, x, schedule: Schedule, timesteps: list[int], *, generator=None, callback=None):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2, with the posterior of eq. 7) over the full grid T-1..0."""
    if list(timesteps) != list(range(timesteps[0], -1, -1)):
        raise ValueError("DDPM steps through every timestep down to 0; use ddim (eta=1 is DDPM's variance) for fewer")
    for i, t in enumerate(timesteps):
        x0, _ = denoise(x, _batch_t(t, x))
        mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x
        x = mean + schedule.posterior_variance[t].sqrt() * _noise_like(x, generator) if t > 0 else mean
        if callback is not None:
            callback({"i": i, "steps": len(timesteps), "t": t, "x": x, "x0": x0})
    return x


def ddim_sigma(alpha_bar, alpha_bar_prev, eta: float):
    """Song et al. 2021, eq. 16: sigma_t(eta); eta = 1 gives DDPM's posterior standard deviation."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()


@torch.no_grad()
def ddim_sample(denoise, x, schedule: Schedule, timesteps: list[int], *, generator=None, callback=None,
                eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 is DDPM's posterior variance."""
    steps = len(timesteps)
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


@torch.no_grad()
def dpmpp_2m_sample(denoise, x, schedule: Schedule, timesteps: list[int], *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the diffusion ODE in its
    data-prediction form, in lambda = log(alpha / sigma). The first step is first order (no history yet) and so is the
    last, which lands on x_0 (sigma = 0, where the step reduces to the prediction itself)."""
    steps = len(timesteps)
    x0_prev = h_prev = None
    for i, t in enumerate(timesteps):
        x0, _ = denoise(x, _batch_t(t, x))
        if i + 1 == steps:
            x = x0
        else:
            s = timesteps[i + 1]
            h = (schedule.log_snr[s] - schedule.log_snr[t]) / 2  # lambda_s - lambda_t, lambda = log-SNR / 2
            denoised = x0
            if x0_prev is not None:  # Algorithm 2: extrapolate the data prediction, r = h_prev / h
                r = h_prev / h
                denoised = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            sigma, sigma_s = schedule.sqrt_one_minus_alpha_bar[t], schedule.sqrt_one_minus_alpha_bar[s]
            # the exponential-integrator step in data-prediction form: x_s = (sigma_s / sigma_t) x_t - alpha_s (e^-h - 1) D
            x = (sigma_s / sigma) * x - schedule.sqrt_alpha_bar[s] * torch.expm1(-h) * denoised
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback({"i": i, "steps": steps, "t": t, "x": x, "x0": x0})
    return x


SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++2m": dpmpp_2m_sample,
}
FULL_GRID_ONLY = {"ddpm"}  # samplers whose update is only defined between neighbouring timesteps
# What `sample`, `eval` and the app use when no sampler is named. 10 steps, not 5: at the guidance weights a
# well-trained model wants (w <= 0.75), 5 steps cost about 1 to 7 FID and 20 steps gain nothing more (the README's
# "Samplers" section has the figures).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 10


def check_sampler(name: str):
    """The registered sampler `name`, or a ValueError that lists the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 downwards, evenly spaced and ending near 0 ("trailing" spacing, Lin et al. 2024,
    table 2), so that even one step starts from pure noise at t = T-1; steps = T is the full grid."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def sampler_timesteps(name: str, T: int, steps: int | None = None) -> list[int]:
    """The grid sampler `name` walks: `steps` trailing-spaced timesteps, all T when steps is None. DDPM always
    takes all T (its posterior is the one-step one, Ho et al. eq. 7)."""
    check_sampler(name)
    if name in FULL_GRID_ONLY and steps not in (None, T):
        raise ValueError(f"{name} always runs all T={T} steps; for {steps} steps use ddim (eta=1 is DDPM's noise)")
    return spaced_timesteps(T, T if steps is None else steps)


def sampler_options(name: str, **options) -> dict:
    """The options (e.g. eta) that sampler `name` accepts, dropping None values and those it has no use for
    (DDPM has no eta); so a caller can offer one set of settings to every sampler."""
    accepted = inspect.signature(check_sampler(name)).parameters
    return {k: v for k, v in options.items() if v is not None and k in accepted}


def sampler_label(name: str, timesteps: list[int]) -> str:
    """'DDIM-10', 'DDPM-1000': the sampler and its number of model evaluations per image (without guidance)."""
    return f"{name.upper()}-{len(timesteps)}"
