"""Classifier-free guidance, in exactly one place.

Convention (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) * eps(x, c) - w * eps(x, null).
w = 0 is plain conditional sampling; larger w trades diversity for fidelity to the class.

The mix is applied to the network's own output (eps, x0 or v). Every parameterization's conversion to (x_0, eps) is
affine in the output with weights (1 + w) and -w summing to one, so mixing outputs gives exactly eq. 6 in eps space
(and the same mix in x_0 space). It is also better conditioned: a v- or x0-model never takes the detour
x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), which divides by ~5e-5 at t = T - 1 of the cosine schedule.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .parameterization import Parameterization, predict_eps_from_x0
from .schedules import Schedule

# A denoiser maps (x_t, t) to (predicted x_0, predicted eps); the samplers only ever see this.
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Ho & Salimans eq. 6."""
    return (1 + w) * cond - w * uncond


def guided_output(model, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, *, null_class: int,
                  w: float | torch.Tensor) -> torch.Tensor:
    """The network's output mixed by eq. 6; w is one weight or one per row, (B,). The conditional and unconditional
    passes run as one batched forward."""
    if not torch.is_tensor(w) and w == 0:
        return model(x_t, t, labels)
    w = torch.as_tensor(w, device=x_t.device, dtype=x_t.dtype).reshape(-1, *[1] * (x_t.dim() - 1))
    null = torch.full_like(labels, null_class)
    cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
    return cfg_mix(cond, uncond, w)


def predict_clipped(schedule: Schedule, parameterization: Parameterization, x_t, t, output, clip_x0: bool = True):
    """(x_0, eps) from the network's output; clip_x0 clamps x_0 to the data range [-1, 1] and re-derives eps from it,
    as improved-diffusion's `clip_denoised` does, which keeps few-step samplers from overshooting."""
    x0, eps = parameterization.to_x0_eps(schedule, x_t, t, output)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = predict_eps_from_x0(schedule, x_t, t, x0)
    return x0, eps


def passes_per_step(model, labels: torch.Tensor, *, null_class: int, w: float) -> int:
    """Network evaluations per image per step: 2 under classifier-free guidance, 1 for a model that takes w as an
    input, with w = 0, or for an all-unconditional batch (see guided_denoiser)."""
    embedded = getattr(model, "guidance_emb", None) is not None
    return 1 if embedded or w == 0 or bool((labels == null_class).all()) else 2


def noise_level(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar) / alpha_bar), the noise-to-signal ratio of x_t (Karras et al. 2022's sigma;
    exp(-log-SNR / 2)): the measure of noise that a guidance interval is given in, the same for every schedule."""
    return (-schedule.log_snr[t] / 2).exp()


def weight_in_interval(schedule: Schedule, t: torch.Tensor, w: float | torch.Tensor,
                       max_sigma: float) -> float | torch.Tensor:
    """The guidance weight at step t when guidance applies only where sigma_t <= max_sigma (Kynkaanniemi et al.
    2024, "Applying guidance in a limited interval", upper end only): w there, 0 (the conditional prediction)
    above it. One number when all rows agree, which they do under every sampler (one t per step), so a step
    outside the interval runs one network pass instead of two."""
    inside = noise_level(schedule, t) <= max_sigma
    if bool(inside.all()):
        return w
    if not bool(inside.any()):
        return 0.0
    return torch.where(inside, torch.as_tensor(w, device=t.device, dtype=torch.float32), 0.0)


def guided_denoiser(model, schedule: Schedule, parameterization: Parameterization, labels: torch.Tensor, *,
                    null_class: int, w: float | torch.Tensor = 0.0, clip_x0: bool = True,
                    max_sigma: float = math.inf) -> Denoiser:
    """A denoiser for `model` conditioned on `labels` (null_class entries are unconditional); w is one guidance
    weight or one per row, (B,). Guidance applies at the steps whose noise level sigma_t is at most max_sigma
    (`weight_in_interval`; the default, inf: at every step).

    A model that takes w as an input (a guidance-distilled student, `model.guidance_emb`) gets it there, in one pass,
    at every step (max_sigma does not apply: the student learned its teacher's guidance).
    Otherwise w != 0 runs the conditional and unconditional passes as one batched forward, and a batch that is all
    null class runs one pass (the mix would return the unconditional pass). See `predict_clipped` for clip_x0.
    """
    embedded = getattr(model, "guidance_emb", None) is not None
    if not embedded and not torch.is_tensor(w) and bool((labels == null_class).all()):
        w = 0.0

    def denoise(x_t: torch.Tensor, t: torch.Tensor):
        if embedded:
            output = model(x_t, t, labels, torch.as_tensor(w, device=x_t.device, dtype=x_t.dtype).expand(x_t.shape[0]))
        else:
            w_t = w if max_sigma == math.inf else weight_in_interval(schedule, t, w, max_sigma)
            output = guided_output(model, x_t, t, labels, null_class=null_class, w=w_t)
        return predict_clipped(schedule, parameterization, x_t, t, output, clip_x0)

    return denoise
