"""The training loss: the weighted MSE between the network's output and its formulation's target."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .formulations import Formulation


def draw_noise(formulation: Formulation, shape: torch.Size, device, generator: torch.Generator | None = None):
    """Noise levels (the formulation's own coordinate) and Gaussian noise for a batch of `shape`, in that order
    from `generator`."""
    return formulation.draw_levels(shape[0], device, generator), torch.randn(shape, device=device, generator=generator)


def diffusion_loss(model, formulation: Formulation, x0: torch.Tensor, labels: torch.Tensor, *, min_snr_gamma: float,
                   generator: torch.Generator | None = None,
                   noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Weighted MSE at drawn noise levels (Ho et al. 2020, Algorithm 1; Karras et al. 2022, eq. 2 with Table 1's
    preconditioning), with the formulation's target and weight. `noise` = (level, eps) is drawn here unless given
    (data-parallel training draws it for the global batch and passes each rank its rows)."""
    level, eps = noise if noise is not None else draw_noise(formulation, x0.shape, x0.device, generator)
    x_in, c_noise, target = formulation.training_example(x0, level, eps)
    output = model(x_in, c_noise, labels)
    per_example = F.mse_loss(output, target, reduction="none").mean(dim=(1, 2, 3))
    return (formulation.loss_weight(level, min_snr_gamma) * per_example).mean()
