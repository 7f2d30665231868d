"""Classifier-free guidance, in exactly one place.

Convention (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) * eps(x, c) - w * eps(x, null).
w = 0 is plain conditional sampling; larger w trades diversity for fidelity to the class.

The mix is applied to the network's own output (eps, x0 or v). Every parameterization's conversion to (x_0, eps) is
affine in the output with weights (1 + w) and -w summing to one, so mixing outputs gives exactly eq. 6 in eps space
(and the same mix in x_0 space). It is also better conditioned: a v- or x0-model never takes the detour
x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), which divides by ~5e-5 at t = T - 1 of the cosine schedule.
"""
from __future__ import annotations

from typing import Callable

import torch

from .parameterization import Parameterization, predict_eps_from_x0
from .schedules import Schedule

# A denoiser maps (x_t, t) to (predicted x_0, predicted eps); the samplers only ever see this.
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Ho & Salimans eq. 6."""
    return (1 + w) * cond - w * uncond


def guided_denoiser(model, schedule: Schedule, parameterization: Parameterization, labels: torch.Tensor, *,
                    null_class: int, w: float = 0.0, clip_x0: bool = True) -> Denoiser:
    """A denoiser for `model` conditioned on `labels` (null_class entries are unconditional).

    With w != 0 the conditional and unconditional passes run as one batched forward (one pass when every label is
    the null class).
    clip_x0 clamps the predicted image to the data range [-1, 1] and re-derives eps from it, as
    improved-diffusion's `clip_denoised` does; this keeps few-step samplers from overshooting.
    """
    null = torch.full_like(labels, null_class)
    if w != 0 and bool((labels == null_class).all()):
        w = 0.0  # every row is unconditional: the mix would return the unconditional pass, so run it alone

    def denoise(x_t: torch.Tensor, t: torch.Tensor):
        if w == 0:
            output = model(x_t, t, labels)
        else:
            cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            output = cfg_mix(cond, uncond, w)
        x0, eps = parameterization.to_x0_eps(schedule, x_t, t, output)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = predict_eps_from_x0(schedule, x_t, t, x0)
        return x0, eps

    return denoise
