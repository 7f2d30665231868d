"""Classifier-free guidance, in exactly one place.

Convention (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) * eps(x, c) - w * eps(x, null).
w = 0 is plain conditional sampling; larger w trades diversity for fidelity to the class.
Guidance mixes in eps space for every objective, so x0- and v-models are guided the same way.
"""
from __future__ import annotations

from typing import Callable

import torch

from .objectives import predict_eps_from_x0, predict_x0_from_eps, split_prediction
from .schedules import Schedule

# A denoiser maps (x_t, t) to (predicted x_0, predicted eps); the samplers only ever see this.
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cfg_mix(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Ho & Salimans eq. 6."""
    return (1 + w) * eps_cond - w * eps_uncond


def guided_denoiser(model, schedule: Schedule, objective: str, labels: torch.Tensor, null_class: int,
                    w: float = 0.0, clip_x0: bool = True) -> Denoiser:
    """A denoiser for `model` conditioned on `labels` (null_class entries are unconditional).

    With w != 0 the conditional and unconditional passes run as one batched forward.
    clip_x0 clamps the predicted image to the data range [-1, 1] and re-derives eps from it, as
    improved-diffusion's `clip_denoised` does; this keeps few-step samplers from overshooting.
    """
    null = torch.full_like(labels, null_class)

    def denoise(x_t: torch.Tensor, t: torch.Tensor):
        if w == 0:
            x0, eps = split_prediction(objective, schedule, x_t, t, model(x_t, t, labels))
        else:
            output = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
            _, eps_both = split_prediction(objective, schedule, torch.cat([x_t, x_t]), torch.cat([t, t]), output)
            eps_cond, eps_uncond = eps_both.chunk(2)
            eps = cfg_mix(eps_cond, eps_uncond, w)
            x0 = predict_x0_from_eps(schedule, x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = predict_eps_from_x0(schedule, x_t, t, x0)
        return x0, eps

    return denoise

