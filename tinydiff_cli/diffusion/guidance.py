"""Classifier-free guidance, in exactly one place, in the noise level sigma.

Convention (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) * eps(x, c) - w * eps(x, null).
w = 0 is plain conditional sampling; larger w trades diversity for fidelity to the class.

The mix is applied to the network's own output (eps, x0, v, EDM's F or a velocity). Every formulation's `to_x0` is
affine in the output with weights (1 + w) and -w summing to one, so mixing outputs gives exactly eq. 6 in eps space
(and the same mix in x_0 space). It is also better conditioned: an eps-model's x_0 = x - sigma * eps is never formed
twice at sigma ~ 157 and then subtracted.

Guidance on an interval (Kynkaanniemi et al. 2024, upper end only): guided where sigma <= max_sigma, the conditional
prediction (one network pass) above it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .formulations import Formulation, per_row

# A denoiser maps (x, sigma) to the predicted x_0; the samplers only ever see this.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Ho & Salimans eq. 6."""
    return (1 + w) * cond - w * uncond


def guided_output(model, x_in: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor, *, null_class: int,
                  w: float | torch.Tensor) -> torch.Tensor:
    """The network's output mixed by eq. 6; w is one weight or one per row, (B,). The conditional and unconditional
    passes run as one batched forward."""
    if not torch.is_tensor(w) and w == 0:
        return model(x_in, c_noise, labels)
    w = per_row(torch.as_tensor(w, device=x_in.device, dtype=x_in.dtype), x_in)
    null = torch.full_like(labels, null_class)
    cond, uncond = model(torch.cat([x_in, x_in]), torch.cat([c_noise, c_noise]), torch.cat([labels, null])).chunk(2)
    return cfg_mix(cond, uncond, w)


def passes_per_step(model, labels: torch.Tensor, *, null_class: int, w: float) -> int:
    """Network evaluations per image per denoiser call: 2 under classifier-free guidance, 1 for a model that takes w
    as an input, with w = 0, or for an all-unconditional batch (see guided_denoiser)."""
    embedded = getattr(model, "guidance_emb", None) is not None
    return 1 if embedded or w == 0 or bool((labels == null_class).all()) else 2


def weight_in_interval(sigma: torch.Tensor, w: float | torch.Tensor, max_sigma: float) -> float | torch.Tensor:
    """The guidance weight at noise level sigma (one, or one per row) when guidance applies only where
    sigma <= max_sigma: w there, 0 (the conditional prediction) above it. One number when all rows agree, which they
    do under every sampler (one sigma per step), so a step outside the interval runs one network pass instead of
    two."""
    inside = sigma <= max_sigma
    if bool(inside.all()):
        return w
    if not bool(inside.any()):
        return 0.0
    return torch.where(inside, torch.as_tensor(w, device=sigma.device, dtype=torch.float32), 0.0)


def guided_denoiser(model, formulation: Formulation, labels: torch.Tensor, *, null_class: int,
                    w: float | torch.Tensor = 0.0, clip_x0: bool = True, max_sigma: float = math.inf) -> Denoiser:
    """D(x; sigma) for `model` under `formulation`, conditioned on `labels` (null_class entries are unconditional);
    sigma is one noise level or one per row, (B,); w is one guidance weight or one per row. Guidance applies where
    sigma <= max_sigma (`weight_in_interval`; the default, inf: at every step).

    A model that takes w as an input (a guidance-distilled student, `model.guidance_emb`) gets it there, in one pass,
    at every step (max_sigma does not apply: the student learned its teacher's guidance).
    Otherwise w != 0 runs the conditional and unconditional passes as one batched forward, and a batch that is all
    null class runs one pass (the mix would return the unconditional pass). clip_x0 clamps the prediction to the
    data range [-1, 1], as improved-diffusion's `clip_denoised` does, which keeps few-step samplers from
    overshooting.
    """
    embedded = getattr(model, "guidance_emb", None) is not None
    if not embedded and not torch.is_tensor(w) and bool((labels == null_class).all()):
        w = 0.0

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        s = per_row(sigma, x)
        x_in, c_noise = formulation.c_in(s) * x, formulation.c_noise(sigma)
        if embedded:
            output = model(x_in, c_noise, labels, torch.as_tensor(w, device=x.device, dtype=x.dtype).expand(x.shape[0]))
        else:
            w_s = w if max_sigma == math.inf else weight_in_interval(sigma, w, max_sigma)
            output = guided_output(model, x_in, c_noise, labels, null_class=null_class, w=w_s)
        x0 = formulation.to_x0(x, s, output)
        return x0.clamp(-1, 1) if clip_x0 else x0

    return denoise
