"""Samplers side by side, from the same initial noise and labels: time, network evaluations and quality."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data import to_uint8
from .pipeline import Pipeline


@dataclass(frozen=True)
class Plan:
    """One entry of a comparison: a pipeline and how to sample it (None: its default, a distilled student's own)."""

    pipe: Pipeline
    sampler: str | None = None
    steps: int | None = None


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


def compare_samplers(plans: list[Plan], labels: torch.Tensor, *, w: float, scorer=None, on_start=None,
                     **sample_kwargs) -> list[SamplerRun]:
    """Runs each plan in order with the same labels, w and `sample_kwargs` (eta, seed, batch_size), so every run
    starts from the same seeded noise; scores each with `scorer` when given. w has no default: the plans' models
    may each have their own, and a comparison is at one weight."""
    runs = []
    for plan in plans:
        pipe = plan.pipe
        sampler, steps = pipe.sampling(plan.sampler, plan.steps, w)
        name = pipe.describe_sampler(sampler, steps)
        if on_start is not None:
            on_start(name)
        start = time.perf_counter()
        images = pipe.sample(labels, sampler=sampler, steps=steps, w=w, **sample_kwargs)
        seconds = time.perf_counter() - start
        sigmas = pipe.sigmas(sampler, steps)
        evaluations = pipe.network_evaluations(labels, w, sampler, sigmas)
        run = SamplerRun(name, sampler, len(sigmas) - 1, evaluations, images, seconds)
        if scorer is not None:
            run.score = scorer.score(to_uint8(images), labels)
        runs.append(run)
    return runs


def speedup(run: SamplerRun, baseline: SamplerRun) -> float:
    return baseline.seconds_per_image / run.seconds_per_image
