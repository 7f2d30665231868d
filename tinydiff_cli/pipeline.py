"""A loaded diffusion model and the ways to draw from it: the one entry point that `sample`, `eval`, `compare`,
`visualize`, `export`, the app and the training previews share.

    pipe = Pipeline.from_checkpoint("runs/unet-small")
    images = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, w=1.0)   # float (10, 1, 28, 28) in [-1, 1]
    images = pipe.sample(pipe.labels("all", 10))   # the defaults: samplers.DEFAULT_SAMPLER (or a distilled student's
                                                   # own sampler and steps) at the model's own w (pipe.default_w)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, DataInfo, DistillInfo, load_checkpoint, load_model
from .config import Config
from .guidance import Denoiser, guided_denoiser, noise_level, passes_per_step
from .parameterization import Parameterization, get_parameterization
from .samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, check_sampler, sampler_label, sampler_options, sampler_timesteps
from .schedules import Schedule, make_schedule


def default_batch_size(device) -> int:
    """Images per sampling batch. On CPU, batches past ~100 (200 rows with guidance) fall out of cache and
    get slower per image (benchmarks/sampling_batch.py); accelerators want large batches."""
    return 100 if torch.device(device).type == "cpu" else 1000


def make_generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def labels_for(choice: str | int | None, n: int, num_classes: int = 10) -> torch.Tensor:
    """"all" cycles 0..num_classes-1 (so a grid with num_classes columns has one class per column),
    an int repeats that class, None/"none" gives the null class num_classes (unconditional), as does everything
    for a model without classes (num_classes 0, trained on an unlabelled folder)."""
    if choice is None or choice == "none" or num_classes == 0:
        return torch.full((n,), num_classes, dtype=torch.long)
    if choice == "all":
        return torch.arange(n, dtype=torch.long) % num_classes
    return torch.full((n,), int(choice), dtype=torch.long)


def resolve_sampling(distilled: DistillInfo | None, sampler: str | None, steps: int | None, w: float,
                     eta: float | None = None, T: int | None = None) -> tuple[str, int | None]:
    """(sampler, steps) to use when asked for `sampler` and `steps`, None meaning "the default": a distilled
    student's own, else samplers.DEFAULT_SAMPLER with DEFAULT_STEPS (at most T). A sampler named without steps takes
    all T. A distilled student refuses other samplers and step counts, eta != 0 and a w outside its range
    (TinydiffError)."""
    if distilled is not None:
        chosen = (sampler or distilled.sampler, steps or distilled.steps)
        distilled.check(*chosen, w, eta)
        return chosen
    if sampler is None:
        return DEFAULT_SAMPLER, steps or min(DEFAULT_STEPS, T or DEFAULT_STEPS)
    return sampler, steps


def default_guidance(config: Config, distilled: DistillInfo | None = None) -> float:
    """The guidance weight to sample with when none is given: the model's train.sample_w (each preset's measured best;
    see the README's "Why these defaults"), moved inside the w range a distilled student learned."""
    w = config.train.sample_w
    return min(max(w, distilled.w_min), distilled.w_max) if distilled is not None else w


def default_max_sigma(config: Config) -> float:
    """The noise level up to which guidance applies when none is given: the model's train.sample_w_max_sigma
    (inf, every step, when it has none; see guidance.weight_in_interval)."""
    max_sigma = config.train.sample_w_max_sigma
    return math.inf if max_sigma is None else max_sigma


@dataclass
class Trajectory:
    """The reverse process, step by step: x[0] is the initial noise, x[i + 1] and x0[i] come from step i."""

    timesteps: list[int]
    x: torch.Tensor  # (steps + 1, N, C, H, W), CPU
    x0: torch.Tensor  # (steps, N, C, H, W), CPU
    alpha_bar: list[float]  # at each step's t
    log_snr: list[float]
    seconds: float


@dataclass
class Pipeline:
    """A denoising network with everything needed to sample from it: its schedule, its parameterization (what it
    predicts), the class names (label len(class_names) is the null class) and the image shape."""

    model: nn.Module
    schedule: Schedule
    parameterization: Parameterization
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width)
    checkpoint: Checkpoint | None = None  # where it was loaded from, if it was
    config: Config | None = None  # the model's config (the checkpoint's, or the one given to from_model)
    w_max_sigma: float | None = None  # guide only at sigma_t <= this (None: the config's; inf: every step)

    @classmethod
    def from_model(cls, model: nn.Module, config: Config, data: DataInfo, checkpoint: Checkpoint | None = None) -> "Pipeline":
        """A pipeline around a model in memory (training previews use the EMA copy this way)."""
        device = next(model.parameters()).device
        d = config.diffusion
        return cls(model, make_schedule(d.schedule, d.timesteps).to(device), get_parameterization(d.objective),
                   data.class_names, (data.channels, data.image_size, data.image_size), checkpoint, config)

    @classmethod
    def from_checkpoint(cls, path: str | Path | Checkpoint, *, device="cpu", weights: str = "ema") -> "Pipeline":
        """A training checkpoint (run folder, .json or its .safetensors), an exported .safetensors model, or a
        Checkpoint already opened; weights "ema" (what sampling should use) or "raw" (the training weights)."""
        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        return cls.from_model(load_model(ckpt, device, weights), ckpt.config, ckpt.data, ckpt)

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid_columns(self) -> int:
        """One class per column; 8 columns for a model without classes."""
        return self.num_classes or 8

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def distilled(self) -> DistillInfo | None:
        """What a student from `tinydiff distill` was distilled for (its sampler, steps and w range); else None."""
        return self.checkpoint.distilled if self.checkpoint is not None else None

    @property
    def model_config(self) -> Config:
        """The config the model was trained with: the one given to from_model, the checkpoint's, else the defaults."""
        return self.config or (self.checkpoint.config if self.checkpoint else Config())

    @property
    def default_w(self) -> float:
        """The guidance weight this model samples with by default (see `default_guidance`)."""
        return default_guidance(self.model_config, self.distilled)

    @property
    def max_sigma(self) -> float:
        """Guidance applies at the steps with sigma_t up to this: `w_max_sigma` when set, else the model's own
        (see `default_max_sigma`)."""
        if self.w_max_sigma is not None:
            return self.w_max_sigma
        return default_max_sigma(self.model_config)

    @property
    def takes_w(self) -> bool:
        """Whether the network takes the guidance weight as an input (a guidance-distilled student)."""
        return getattr(self.model, "guidance_emb", None) is not None

    def sampling(self, sampler: str | None = None, steps: int | None = None, w: float | None = None,
                 eta: float | None = None) -> tuple[str, int | None]:
        """See `resolve_sampling`; w None is the model's own (`default_w`)."""
        return resolve_sampling(self.distilled, sampler, steps, self.default_w if w is None else w, eta, self.T)

    def to(self, device) -> "Pipeline":
        """Move the model and the schedule together."""
        self.model, self.schedule = self.model.to(device), self.schedule.to(device)
        return self

    def labels(self, choice: str | int | None, n: int) -> torch.Tensor:
        """See `labels_for`: "all", a class index, or None/"none" for unconditional."""
        return labels_for(choice, n, self.num_classes)

    def timesteps(self, sampler: str | None = None, steps: int | None = None) -> list[int]:
        """The grid `sampler` walks for this model's T (see `sampling` and samplers.sampler_timesteps)."""
        sampler, steps = self.sampling(sampler, steps, self._any_w())
        return sampler_timesteps(sampler, self.T, steps)

    def _any_w(self) -> float:
        return self.distilled.w_min if self.distilled is not None else 0.0  # for questions that do not involve w

    def describe_sampler(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None) -> str:
        """'DDIM-10' or 'DDPM-1000' for this model's T; with eta, 'DDIM-10 (eta=0)' for samplers that take it;
        'distilled DDIM-2' for a distilled student."""
        sampler, steps = self.sampling(sampler, steps, self._any_w())
        label = ("distilled " if self.distilled else "") + sampler_label(sampler, self.timesteps(sampler, steps))
        return f"{label} (eta={eta:g})" if sampler_options(sampler, eta=eta) else label

    # ---- drawing ------------------------------------------------------------------------------------------
    def denoiser(self, labels: torch.Tensor, w: float | None = None, max_sigma: float | None = None) -> Denoiser:
        """(x_t, t) -> (x_0, eps) for `labels`, with classifier-free guidance of weight w at the steps whose noise level
        sigma_t is at most max_sigma (None: `default_w`, `max_sigma`)."""
        return guided_denoiser(self.model, self.schedule, self.parameterization, labels.to(self.device),
                               null_class=self.null_class, w=self.default_w if w is None else w,
                               max_sigma=self.max_sigma if max_sigma is None else max_sigma)

    def network_evaluations(self, labels: torch.Tensor, w: float, timesteps: list[int]) -> int:
        """Network evaluations per image over `timesteps`: 2 per step under classifier-free guidance, 1 at the steps
        outside the guidance interval, `max_sigma` (see guidance.passes_per_step and weight_in_interval)."""
        passes, max_sigma = passes_per_step(self.model, labels, null_class=self.null_class, w=w), self.max_sigma
        if passes == 1 or max_sigma == math.inf or self.takes_w:
            return passes * len(timesteps)
        guided = noise_level(self.schedule, torch.tensor(timesteps, device=self.schedule.log_snr.device)) <= max_sigma
        return len(timesteps) + int(guided.sum())

    def _run(self, labels, x, *, sampler, timesteps, eta, w, generator, callback):
        return check_sampler(sampler)(self.denoiser(labels, w), x, self.schedule, timesteps, generator=generator,
                                      callback=callback, **sampler_options(sampler, eta=eta))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, w: float | None = None, seed: int = 0, batch_size: int | None = None,
               callback=None) -> torch.Tensor:
        """Samples for `labels` in batches: float (N, C, H, W) in [-1, 1], on CPU.

        sampler and steps as in `sampling` (None: the default; a sampler without steps: all T). eta goes to the
        samplers that take it (DDIM). w is the guidance weight, applied at the steps with sigma_t <= `max_sigma`; None
        is the model's own (`default_w`), as in the CLI.
        All initial noise is drawn first from the seeded generator, so every sampler run with the same seed starts
        from the same noise, whatever the batch size. `callback` gets each step's dict (see samplers).
        """
        sampler, steps = self.sampling(sampler, steps, w, eta)
        timesteps = self.timesteps(sampler, steps)
        batch_size = batch_size or default_batch_size(self.device)
        generator = make_generator(seed, self.device)
        noise = torch.randn((labels.shape[0], *self.image_shape), device=self.device, generator=generator)
        out = []
        for start in range(0, labels.shape[0], batch_size):
            stop = start + batch_size
            out.append(self._run(labels[start:stop], noise[start:stop], sampler=sampler, timesteps=timesteps, eta=eta,
                                 w=w, generator=generator, callback=callback).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def trajectory(self, labels: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                   eta: float | None = None, w: float | None = None, seed: int = 0) -> Trajectory:
        """Sample one batch and keep every step; its last frame equals `sample` with the same arguments."""
        sampler, steps = self.sampling(sampler, steps, w, eta)
        timesteps = self.timesteps(sampler, steps)
        generator = make_generator(seed, self.device)
        x = torch.randn((labels.shape[0], *self.image_shape), device=self.device, generator=generator)
        frames, predictions = [x.cpu()], []

        def record(info):
            frames.append(info["x"].cpu())
            predictions.append(info["x0"].cpu())

        start = time.perf_counter()
        self._run(labels, x, sampler=sampler, timesteps=timesteps, eta=eta, w=w, generator=generator, callback=record)
        seconds = time.perf_counter() - start
        ts = torch.tensor(timesteps)
        return Trajectory(timesteps, torch.stack(frames), torch.stack(predictions),
                          self.schedule.alpha_bar.cpu()[ts].tolist(), self.schedule.log_snr.cpu()[ts].tolist(), seconds)
