"""What the network predicts, as one object per objective: eps (the noise), x0 (the clean image) or v (the velocity
v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x_0, Salimans & Ho 2022, sec. 4).

Each object knows its training target, how to turn the network's output into the pair (x_0, eps), and its Min-SNR
loss weight. Samplers never see the objective: the denoiser hands them (x_0, eps). Nothing outside this module
branches on the objective's name.

    param = get_parameterization("v")
    x0, eps = param.to_x0_eps(schedule, x_t, t, model(x_t, t, labels))
"""
from __future__ import annotations

import torch

from .schedules import Schedule


def at_t(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against a batch of images (B, 1, 1, 1)."""
    return values[t].view(-1, 1, 1, 1)


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (Ho et al. 2020, eq. 4)."""
    return at_t(schedule.sqrt_alpha_bar, t) * x0 + at_t(schedule.sqrt_one_minus_alpha_bar, t) * noise


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps):
    """Eq. 4 solved for x_0; ill-conditioned near t = T, where sqrt(alpha_bar) -> 0."""
    return (x_t - at_t(schedule.sqrt_one_minus_alpha_bar, t) * eps) / at_t(schedule.sqrt_alpha_bar, t)


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0):
    """Eq. 4 solved for eps; ill-conditioned near t = 0, where sqrt(1 - alpha_bar) -> 0."""
    return (x_t - at_t(schedule.sqrt_alpha_bar, t) * x0) / at_t(schedule.sqrt_one_minus_alpha_bar, t)


class Parameterization:
    """One prediction target. Subclasses set `name` and define `target` and `to_x0_eps`, both affine in the
    network's output for fixed x_t and t (classifier-free guidance relies on that, see guidance.py)."""

    name: str

    def target(self, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for x_t = q_sample(x0, t, eps)."""
        raise NotImplementedError

    def to_x0_eps(self, schedule: Schedule, x_t, t, output) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output -> (predicted x_0, predicted eps)."""
        raise NotImplementedError

    def mse_scale(self, snr: torch.Tensor) -> torch.Tensor:
        """k(SNR) in ||target - guess||^2 = k * ||x_0 - x0_guess||^2 for guesses consistent with x_t."""
        raise NotImplementedError

    def loss_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023, eq. 9 and sec. 3.4): weight the x_0 error by min(SNR, gamma), i.e.
        this target's MSE by min(SNR, gamma) / k(SNR). gamma = 0 turns the weighting off."""
        if gamma <= 0:
            return torch.ones_like(snr)
        return snr.clamp(max=gamma) / self.mse_scale(snr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Parameterization):
    """The network predicts the noise (Ho et al. 2020, eq. 14)."""

    name = "eps"

    def target(self, schedule, x0, eps, t):
        return eps

    def to_x0_eps(self, schedule, x_t, t, output):
        return predict_x0_from_eps(schedule, x_t, t, output), output

    def mse_scale(self, snr):
        return snr  # eps - eps_hat = sqrt(SNR) (x0_hat - x_0)


class X0Prediction(Parameterization):
    """The network predicts the clean image."""

    name = "x0"

    def target(self, schedule, x0, eps, t):
        return x0

    def to_x0_eps(self, schedule, x_t, t, output):
        return output, predict_eps_from_x0(schedule, x_t, t, output)

    def mse_scale(self, snr):
        return torch.ones_like(snr)


class VPrediction(Parameterization):
    """The network predicts v (Salimans & Ho 2022, sec. 4); both conversions stay well-conditioned at every t."""

    name = "v"

    def target(self, schedule, x0, eps, t):
        return at_t(schedule.sqrt_alpha_bar, t) * eps - at_t(schedule.sqrt_one_minus_alpha_bar, t) * x0

    def to_x0_eps(self, schedule, x_t, t, output):
        # with alpha^2 + sigma^2 = 1: x_0 = alpha x_t - sigma v and eps = sigma x_t + alpha v
        alpha, sigma = at_t(schedule.sqrt_alpha_bar, t), at_t(schedule.sqrt_one_minus_alpha_bar, t)
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output

    def mse_scale(self, snr):
        return snr + 1  # v - v_hat = sqrt(SNR + 1) (x0_hat - x_0)


PARAMETERIZATIONS: dict[str, Parameterization] = {p.name: p for p in (EpsPrediction(), X0Prediction(), VPrediction())}
OBJECTIVES = tuple(PARAMETERIZATIONS)


def get_parameterization(name: str) -> Parameterization:
    try:
        return PARAMETERIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
