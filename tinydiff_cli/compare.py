"""Samplers side by side, from the same initial noise and labels: time and quality."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data import to_uint8
from .pipeline import Pipeline


@dataclass
class SamplerRun:
    name: str  # e.g. "DDIM-10"
    sampler: str  # the registry name
    model_steps: int
    images: torch.Tensor  # float (N, C, H, W) on CPU
    seconds: float
    score: object = None  # evaluation.Score when a scorer was given

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]


def compare_samplers(pipe: Pipeline, labels: torch.Tensor, plans: list[tuple[str, int | None]], *, scorer=None,
                     on_start=None, **sample_kwargs) -> list[SamplerRun]:
    """Runs each (sampler, steps) plan in order with the same `sample_kwargs` (w, eta, seed, batch_size), so every
    run starts from the same seeded noise; scores each with `scorer` when given."""
    runs = []
    for sampler, steps in plans:
        timesteps = pipe.timesteps(sampler, steps)
        name = pipe.describe_sampler(sampler, steps)
        if on_start is not None:
            on_start(name)
        start = time.perf_counter()
        images = pipe.sample(labels, sampler=sampler, steps=steps, **sample_kwargs)
        run = SamplerRun(name, sampler, len(timesteps), images, time.perf_counter() - start)
        if scorer is not None:
            run.score = scorer.score(to_uint8(images), labels)
        runs.append(run)
    return runs


def speedup(run: SamplerRun, baseline: SamplerRun) -> float:
    return baseline.seconds_per_image / run.seconds_per_image
