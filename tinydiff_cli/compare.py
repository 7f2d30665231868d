"""DDPM against DDIM at several step counts, from the same initial noise and labels: time and quality."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data import to_uint8
from .sampling import sample_images


@dataclass
class SamplerRun:
    name: str
    ddim_steps: int | None  # None: DDPM over all T steps
    model_steps: int
    images: torch.Tensor  # float (N, 1, H, W) on CPU
    seconds: float
    score: object = None  # evaluation.Score when a scorer was given

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]


def compare_samplers(model, schedule, objective: str, labels: torch.Tensor, ddim_steps=(10, 50, 100), *,
                     w: float = 0.0, eta: float = 0.0, seed: int = 0, batch_size: int | None = None, scorer=None,
                     on_start=None) -> list[SamplerRun]:
    """Runs DDPM first, then DDIM at each step count; every run starts from the same seeded noise."""
    plans = [(f"DDPM-{schedule.T}", None, schedule.T)] + [(f"DDIM-{s}", s, s) for s in ddim_steps]
    runs = []
    for name, steps, model_steps in plans:
        if on_start is not None:
            on_start(name)
        start = time.perf_counter()
        images = sample_images(model, schedule, objective, labels, ddim_steps=steps, eta=eta, w=w, seed=seed,
                               batch_size=batch_size)
        run = SamplerRun(name, steps, model_steps, images, time.perf_counter() - start)
        if scorer is not None:
            run.score = scorer.score(to_uint8(images), labels)
        runs.append(run)
    return runs


def speedup(run: SamplerRun, baseline: SamplerRun) -> float:
    return baseline.seconds_per_image / run.seconds_per_image
