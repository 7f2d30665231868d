"""Samplers side by side, from the same initial noise and labels: time, network evaluations and quality."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..data.datasets import to_uint8
from .pipeline import Pipeline
from .plan import SamplingPlan


@dataclass(frozen=True)
class Entry:
    """One entry of a comparison: a pipeline and its sampling plan (sampling/plan.py)."""

    pipe: Pipeline
    plan: SamplingPlan


@dataclass
class SamplerRun:
    name: str  # e.g. "DDIM-10", "distilled DDIM-2"
    sampler: str  # the registry name
    model_steps: int
    evaluations: int  # network evaluations per image (two per step under classifier-free guidance)
    images: torch.Tensor  # float (N, C, H, W) on CPU
    seconds: float
    score: object = None  # evaluation.Score when a scorer was given

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]

    @property
    def family(self) -> str:
        """'DDIM', 'DPM++2M', 'distilled DDIM': the name without its step count, one curve of the frontier plot."""
        return self.name.rsplit("-", 1)[0]


def compare_samplers(entries: list[Entry], labels: torch.Tensor, *, seed: int = 0, batch_size: int | None = None,
                     scorer=None, on_start=None) -> list[SamplerRun]:
    """Runs each entry in order with the same labels and seed, so every run starts from the same seeded noise; scores
    each with `scorer` when given. The plans carry w: a comparison is at one weight, which the caller puts in each."""
    runs = []
    for entry in entries:
        pipe, plan = entry.pipe, entry.plan
        if on_start is not None:
            on_start(plan.label)
        start = time.perf_counter()
        images = pipe.sample(labels, plan, seed=seed, batch_size=batch_size)
        seconds = time.perf_counter() - start
        run = SamplerRun(plan.label, plan.sampler, plan.steps, pipe.network_evaluations(labels, plan), images, seconds)
        if scorer is not None:
            run.score = scorer.score(to_uint8(images), labels)
        runs.append(run)
    return runs


def speedup(run: SamplerRun, baseline: SamplerRun) -> float:
    return baseline.seconds_per_image / run.seconds_per_image
