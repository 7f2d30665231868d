"""The forward process q(x_t | x_0), the three prediction targets and the training loss.

A model trained with objective ``eps`` predicts the noise, ``x0`` the clean image, ``v`` the velocity
v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0 (Salimans & Ho 2022, sec. 4). Samplers never look at
the objective: `split_prediction` turns any model output into the pair (x_0, eps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import Schedule

OBJECTIVES = ("eps", "x0", "v")


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against a batch of images (B, 1, 1, 1)."""
    return values[t].view(-1, 1, 1, 1)


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (Ho et al. eq. 4)."""
    return _at(schedule.sqrt_alpha_bar, t) * x0 + _at(schedule.sqrt_one_minus_alpha_bar, t) * noise


def predict_x0_from_eps(schedule, x_t, t, eps):
    return (x_t - _at(schedule.sqrt_one_minus_alpha_bar, t) * eps) / _at(schedule.sqrt_alpha_bar, t)


def predict_eps_from_x0(schedule, x_t, t, x0):
    return (x_t - _at(schedule.sqrt_alpha_bar, t) * x0) / _at(schedule.sqrt_one_minus_alpha_bar, t)


def v_from_x0_eps(schedule, x0, eps, t):
    return _at(schedule.sqrt_alpha_bar, t) * eps - _at(schedule.sqrt_one_minus_alpha_bar, t) * x0


def predict_x0_from_v(schedule, x_t, t, v):
    # Salimans & Ho 2022, sec. 4: x_0 = alpha x_t - sigma v with alpha^2 + sigma^2 = 1
    return _at(schedule.sqrt_alpha_bar, t) * x_t - _at(schedule.sqrt_one_minus_alpha_bar, t) * v


def predict_eps_from_v(schedule, x_t, t, v):
    return _at(schedule.sqrt_one_minus_alpha_bar, t) * x_t + _at(schedule.sqrt_alpha_bar, t) * v


def split_prediction(objective: str, schedule: Schedule, x_t, t, output):
    """Any model output -> (predicted x_0, predicted eps)."""
    if objective == "eps":
        return predict_x0_from_eps(schedule, x_t, t, output), output
    if objective == "x0":
        return output, predict_eps_from_x0(schedule, x_t, t, output)
    if objective == "v":
        return predict_x0_from_v(schedule, x_t, t, output), predict_eps_from_v(schedule, x_t, t, output)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def training_target(objective: str, schedule: Schedule, x0, eps, t):
    if objective == "eps":
        return eps
    if objective == "x0":
        return x0
    if objective == "v":
        return v_from_x0_eps(schedule, x0, eps, t)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def min_snr_weight(objective: str, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 9 and sec. 3.4) for the MSE on each objective's target.

    The x_0 loss weighted by min(SNR, gamma) is the same loss expressed on eps (divide by SNR, since
    ||eps - eps_hat||^2 = SNR ||x_0 - x0_hat||^2) or on v (divide by SNR + 1, since
    ||v - v_hat||^2 = (SNR + 1) ||x_0 - x0_hat||^2).
    gamma = 0 turns the weighting off.
    """
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "x0":
        return clipped
    if objective == "v":
        return clipped / (snr + 1)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def diffusion_loss(model, schedule: Schedule, x0, labels, *, objective: str, min_snr_gamma: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted MSE between the model's output and the objective's target at uniformly drawn t."""
    batch = x0.shape[0]
    t = torch.randint(0, schedule.T, (batch,), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    x_t = q_sample(schedule, x0, t, eps)
    output = model(x_t, t, labels)
    target = training_target(objective, schedule, x0, eps, t)
    per_example = F.mse_loss(output, target, reduction="none").mean(dim=(1, 2, 3))
    return (min_snr_weight(objective, schedule.snr[t], min_snr_gamma) * per_example).mean()
