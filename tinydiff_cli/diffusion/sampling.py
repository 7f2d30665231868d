"""Samplers: plain functions over tensors in the noise level sigma, one shared signature, one registry.

    sampler(denoise, x, sigmas, *, generator=None, callback=None, ...) -> x_0

`denoise(x, sigma)` is the denoiser D(x; sigma) -> predicted x_0 of formulations.py (guided: guidance.py), for
x = x_0 + sigma * eps. `sigmas` is a descending grid ending at 0 (`sampling_sigmas`); x starts as noise of the
formulation's `prior_std` and each step moves it from sigmas[i] to sigmas[i + 1], the last landing on x_0. Written
this way (Karras et al. 2022, sec. 2; k-diffusion's sampling.py), one sampler serves every formulation.
`callback`, when given, is called after every step with a dict (i, steps, sigma, x, x0): progress bars, GIF frames.
Options beyond the shared ones (such as DDIM's eta) are keyword-only with defaults.

Adding a sampler means writing its function and adding it to SAMPLERS; the CLI's choices come from there.
"""
from __future__ import annotations

import inspect

import torch

from .formulations import Formulation


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def _report(callback, i: int, sigmas: torch.Tensor, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "steps": len(sigmas) - 1, "sigma": float(sigmas[i]), "x": x, "x0": x0})


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up): a step to sigma_next as a deterministic move to sigma_down plus fresh noise of
    sigma_up. sigma_up is DDIM's sigma_t(eta) of Song et al. 2021, eq. 16, in sigma (divided by sqrt(alpha_bar_next)):
    eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2); eta = 1 is DDPM's posterior (k-diffusion's
    get_ancestral_step)."""
    sigma_up = (eta * sigma_next * (1 - sigma_next**2 / sigma**2).clamp(min=0).sqrt()).clamp(max=sigma_next)
    return (sigma_next**2 - sigma_up**2).clamp(min=0).sqrt(), sigma_up


@torch.no_grad()
def ddim_sample(denoise, x, sigmas: torch.Tensor, *, generator=None, callback=None, eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12): x_0 plus the "direction pointing to x_t" rescaled to the next noise level,
    i.e. Euler on the probability-flow ODE dx/dsigma = (x - D) / sigma (Karras et al. 2022, eq. 3); eta = 0 is
    deterministic, eta > 0 adds eq. 16's noise (`ancestral_step`)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x0 + (sigma_down / sigma) * (x - x0)
        if eta > 0 and sigma_next > 0:
            x = x + sigma_up * _noise_like(x, generator)
        _report(callback, i, sigmas, x, x0)
    return x


@torch.no_grad()
def ddpm_sample(denoise, x, sigmas: torch.Tensor, *, generator=None, callback=None):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over every timestep of a discrete schedule: between
    neighbouring timesteps, DDIM at eta = 1 is exactly the posterior q(x_{t-1} | x_t, x_0) of eq. 7 (Song et al.
    2021, sec. 4.1)."""
    return ddim_sample(denoise, x, sigmas, generator=generator, callback=callback, eta=1.0)


@torch.no_grad()
def dpmpp_2m_sample(denoise, x, sigmas: torch.Tensor, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the diffusion ODE in its
    data-prediction form, in lambda = -log sigma. The first step is first order (no history yet) and so is the
    last, which lands on x_0 (sigma = 0, where the step reduces to the prediction itself)."""
    x0_prev = h_prev = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            x = x0
        else:
            h = (sigma / sigma_next).log()  # lambda_next - lambda
            denoised = x0
            if x0_prev is not None:  # Algorithm 2: extrapolate the data prediction, r = h_prev / h
                r = h_prev / h
                denoised = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # the exponential-integrator step in data-prediction form: x' = (sigma' / sigma) x - (e^-h - 1) D
            x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised
            x0_prev, h_prev = x0, h
        _report(callback, i, sigmas, x, x0)
    return x


@torch.no_grad()
def heun_sample(denoise, x, sigmas: torch.Tensor, *, generator=None, callback=None):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic: S_churn = 0): an Euler step,
    corrected by the slope at its end, except on the last step to sigma = 0 (Euler, which lands on D). 2N - 1
    denoiser calls for N steps. Made for grids like EDM's, whose steps shrink smoothly: a first step over a huge
    ratio of sigmas (a discrete cosine schedule's 20291 -> 32 at 50 steps) averages two slopes over a range where
    the slope is not linear, and loses accuracy that DDIM and DPM-Solver++ keep (tests/test_samplers.py)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        slope = (x - x0) / sigma  # eq. 3: dx/dsigma
        x_euler = x + (sigma_next - sigma) * slope
        if sigma_next == 0:
            x = x_euler
        else:
            slope_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * (slope + slope_next) / 2
        _report(callback, i, sigmas, x, x0)
    return x


SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++2m": dpmpp_2m_sample,
    "heun": heun_sample,
}
FULL_GRID_ONLY = {"ddpm"}  # samplers defined only between neighbouring timesteps of a discrete schedule
TWO_CALLS_PER_STEP = {"heun"}  # samplers that call the denoiser at both ends of a step (but the last)
# What `sample`, `eval` and the app use when no sampler is named. 10 steps, not 5: at the guidance weights a
# well-trained model wants (w <= 0.75), 5 steps cost about 1 to 7 FID and 20 steps gain nothing more (the README's
# "Samplers" section has the figures).
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 10


def check_sampler(name: str):
    """The registered sampler `name`, or a ValueError that lists the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampling_sigmas(formulation: Formulation, name: str, steps: int | None = None) -> torch.Tensor:
    """The descending sigma grid that sampler `name` walks for `formulation`, ending at 0: its default grid of
    `steps` steps. A discrete schedule without steps takes all T, and DDPM always does (its posterior is the
    one-step one, Ho et al. eq. 7); a continuous formulation without steps takes DEFAULT_STEPS."""
    check_sampler(name)
    if formulation.discrete:
        T = formulation.T
        if name in FULL_GRID_ONLY and steps not in (None, T):
            raise ValueError(f"{name} always runs all T={T} steps; for {steps} steps use ddim (eta=1 is DDPM's noise)")
        return formulation.sigmas(T if steps is None else steps)
    if name in FULL_GRID_ONLY:
        raise ValueError(f"{name} steps through the timesteps of a discrete schedule, and this model is "
                         f"'{formulation.name}'; use ddim, heun or dpm++2m")
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return formulation.sigmas(steps)


def evaluation_sigmas(name: str, sigmas: torch.Tensor) -> torch.Tensor:
    """The noise levels at which sampler `name` calls the denoiser over `sigmas` (for counting network passes)."""
    check_sampler(name)
    calls = sigmas[:-1]
    if name in TWO_CALLS_PER_STEP:
        calls = torch.cat([calls, sigmas[1:-1]])
    return calls


def sampler_options(name: str, **options) -> dict:
    """The options (e.g. eta) that sampler `name` accepts, dropping None values and those it has no use for
    (DDPM has no eta); so a caller can offer one set of settings to every sampler."""
    accepted = inspect.signature(check_sampler(name)).parameters
    return {k: v for k, v in options.items() if v is not None and k in accepted}


def sampler_label(name: str, sigmas: torch.Tensor) -> str:
    """'DDIM-10', 'DDPM-1000': the sampler and its number of steps."""
    return f"{name.upper()}-{len(sigmas) - 1}"
