"""Noise schedules as pure functions, and the precomputed tensors every part of the engine reads.

Schedules are computed in float64 (improved-diffusion does the same: products of 1000 factors lose
precision in float32) and stored as float32, because MPS has no float64. A named schedule is never
changed once released: checkpoints record the name and rebuild it.

Index convention: t runs over 0..T-1 and alpha_bar[t] = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4).
A discrete schedule is one kind of noise schedule for the engine, which works in the noise level
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (formulations.DiscreteVP calls the network at its own t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

SCHEDULES = ("linear", "cosine", "sigmoid")
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, sec. 3.2: clip to avoid singularities near t = T


def linear_betas(T: int) -> torch.Tensor:
    """Ho et al. 2020: beta rises linearly from 1e-4 to 0.02 at T = 1000.

    For other T the end points are scaled by 1000/T (as improved-diffusion does) so that the total
    noise added, and so alpha_bar at t = T-1, stays about the same.
    """
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=MAX_BETA)


def cosine_alpha_bar(s: torch.Tensor, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17, before normalising by f(0); s in [0, 1]."""
    return torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2


def sigmoid_alpha_bar(s: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Chen 2023 ("On the importance of noise scheduling", Alg. 1): a sigmoid between start and end."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    return (v_end - torch.sigmoid((s * (end - start) + start) / tau)) / (v_end - v_start)


def betas_from_alpha_bar(alpha_bar_fn, T: int) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t+1)/alpha_bar(t) on a grid of T+1 points in [0, 1], clipped at MAX_BETA."""
    s = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    alpha_bar = alpha_bar_fn(s)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=0.0, max=MAX_BETA)


def make_betas(name: str, T: int) -> torch.Tensor:
    if name == "linear":
        return linear_betas(T)
    if name == "cosine":
        return betas_from_alpha_bar(cosine_alpha_bar, T)
    if name == "sigmoid":
        return betas_from_alpha_bar(sigmoid_alpha_bar, T)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """Every per-timestep quantity the forward process, the losses and the samplers need (float32)."""

    betas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor  # alpha_bar[t-1], with alpha_bar[-1] = 1
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    posterior_variance: torch.Tensor  # beta-tilde, Ho et al. eq. 7
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor
    log_snr: torch.Tensor  # log(alpha_bar / (1 - alpha_bar))
    sigmas: torch.Tensor  # the noise level sqrt((1 - alpha_bar) / alpha_bar) = exp(-log-SNR / 2) (Karras et al. 2022)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def snr(self) -> torch.Tensor:
        return self.log_snr.exp()

    def to(self, device) -> "Schedule":
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def schedule_from_betas(betas: torch.Tensor) -> Schedule:
    betas = betas.to(torch.float64)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    values = dict(
        betas=betas,
        alpha_bar=alpha_bar,
        alpha_bar_prev=alpha_bar_prev,
        sqrt_alpha_bar=alpha_bar.sqrt(),
        sqrt_one_minus_alpha_bar=(1 - alpha_bar).sqrt(),
        posterior_variance=posterior_variance,
        # Ho et al. eq. 7: mu~_t = coef_x0 * x_0 + coef_xt * x_t
        posterior_mean_coef_x0=betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
        posterior_mean_coef_xt=(1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar),
        log_snr=alpha_bar.log() - (1 - alpha_bar).log(),
        sigmas=((1 - alpha_bar) / alpha_bar).sqrt(),
    )
    return Schedule(**{k: v.to(torch.float32) for k, v in values.items()})


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """The named schedule with T steps, e.g. ``make_schedule("cosine", 1000).alpha_bar``."""
    return schedule_from_betas(make_betas(name, T))
