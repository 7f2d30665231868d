"""Exponential moving average of a model's parameters, kept in a separate copy used for sampling."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: int) -> float:
    """Decay with warm-up, min(decay, (1 + n) / (warmup + n)): early on the average follows the
    weights closely, so short runs still sample from a sensible model."""
    if warmup <= 0:
        return decay
    return min(decay, (1 + step) / (warmup + step))


class EMA:
    """Holds `ema_model`, a frozen copy of the model whose parameters track the training weights.

    Only parameters are averaged; buffers are copied. The copy is never the training model, so
    sampling from it cannot leak averaged weights back into training.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 10):
        self.decay, self.warmup = decay, warmup
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_params = list(self.ema_model.parameters())
        params = list(model.parameters())
        torch._foreach_lerp_(ema_params, params, 1 - d)  # ema <- d * ema + (1 - d) * p, fused over all tensors
        for ema_buf, buf in zip(self.ema_model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
