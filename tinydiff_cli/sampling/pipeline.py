"""A loaded diffusion model and the ways to draw from it: the one entry point that `sample`, `eval`, `compare`,
`visualize`, `export`, the app and the training previews share.

    pipe = Pipeline.from_checkpoint("runs/unet-small")
    images = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, w=1.0)   # float (10, 1, 28, 28) in [-1, 1]
    images = pipe.sample(pipe.labels("all", 10))   # the defaults: sampling.DEFAULT_SAMPLER (or a distilled student's
                                                   # own sampler and steps) at the model's own w (pipe.plan().w)
    plan = pipe.plan(sampler="ddim", steps=10)     # decided once (sampling/plan.py), then used as it is:
    images, evals = pipe.sample(labels, plan), pipe.network_evaluations(labels, plan)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io.checkpoint import Checkpoint, DataInfo, DistillInfo, load_checkpoint, load_model
from ..config import Config
from ..diffusion.formulations import Formulation
from ..diffusion.guidance import Denoiser, guided_denoiser, passes_per_step
from ..diffusion.sampling import check_sampler, evaluation_sigmas
from ..diffusion.schedules import Schedule
from .plan import SamplingPlan, SamplingRequest, plan_sampling


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


@dataclass
class Trajectory:
    """The reverse process, step by step: x[0] is the initial noise, x[i + 1] and x0[i] come from step i. The frames
    x are shown as a variance-preserving model sees them, x / sqrt(1 + sigma^2), whatever the formulation."""

    sigmas: list[float]  # each step's noise level
    timesteps: list[int] | None  # each step's t, for a discrete schedule
    x: torch.Tensor  # (steps + 1, N, C, H, W), CPU
    x0: torch.Tensor  # (steps, N, C, H, W), CPU
    seconds: float
    sampler: str = ""  # how it was drawn: the plan's description, 'DDIM-10 (eta=0)'

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def alpha_bar(self) -> list[float]:
        """The signal share 1 / (1 + sigma^2) at each step (alpha_bar_t for a discrete schedule)."""
        return [1 / (1 + s * s) for s in self.sigmas]

    @property
    def log_snr(self) -> list[float]:
        return [-2 * math.log(s) for s in self.sigmas]

    def step_label(self, i: int) -> str:
        """'t=999' for a discrete schedule, else 'sigma=80'."""
        return f"t={self.timesteps[i]}" if self.timesteps is not None else f"sigma={self.sigmas[i]:.3g}"


@dataclass
class Pipeline:
    """A denoising network with everything needed to sample from it: its formulation (the noise schedule, what it
    predicts and how that becomes x_0), the class names (label len(class_names) is the null class) and the image
    shape."""

    model: nn.Module
    formulation: Formulation
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width)
    checkpoint: Checkpoint | None = None  # where it was loaded from, if it was
    config: Config | None = None  # the model's config (the checkpoint's, or the one given to from_model)

    @classmethod
    def from_model(cls, model: nn.Module, config: Config, data: DataInfo, checkpoint: Checkpoint | None = None) -> "Pipeline":
        """A pipeline around a model in memory (training previews use the EMA copy this way)."""
        device = next(model.parameters()).device
        return cls(model, config.diffusion.formulation().to(device), data.class_names, (data.channels, data.image_size, data.image_size), checkpoint, config)

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
    def T(self) -> int | None:
        """The number of timesteps of a discrete schedule; None for a continuous formulation (EDM, flow)."""
        return self.formulation.T if self.formulation.discrete else None

    @property
    def schedule(self) -> Schedule:
        """A discrete formulation's schedule (alpha_bar and the rest)."""
        if not self.formulation.discrete:
            raise AttributeError(f"a '{self.formulation.name}' model has no discrete schedule")
        return self.formulation.schedule

    @property
    def distilled(self) -> DistillInfo | None:
        """What a student from `tinydiff distill` was distilled for (its sampler, steps and w range); else None."""
        return self.checkpoint.distilled if self.checkpoint is not None else None

    @property
    def model_config(self) -> Config:
        """The config the model was trained with: the one given to from_model, the checkpoint's, else the defaults."""
        return self.config or (self.checkpoint.config if self.checkpoint else Config())

    @property
    def takes_w(self) -> bool:
        """Whether the network takes the guidance weight as an input (a guidance-distilled student)."""
        return getattr(self.model, "guidance_emb", None) is not None

    def plan(self, sampler: str | None = None, steps: int | None = None, *, eta: float = 0.0, w: float | None = None,
             max_sigma: float | None = None) -> SamplingPlan:
        """How to draw from this model (sampling/plan.py: `SamplingRequest` says what None means); every choice
        checked against the registry, the model's T and what a distilled student was distilled for."""
        return plan_sampling(self.formulation, self.model_config, self.distilled,
                             SamplingRequest(sampler, steps, eta, w, max_sigma))

    def to(self, device) -> "Pipeline":
        """Move the model and the formulation's tables together."""
        self.model, self.formulation = self.model.to(device), self.formulation.to(device)
        return self

    def labels(self, choice: str | int | None, n: int) -> torch.Tensor:
        """See `labels_for`: "all", a class index, or None/"none" for unconditional."""
        return labels_for(choice, n, self.num_classes)

    # ---- drawing ------------------------------------------------------------------------------------------
    def denoiser(self, labels: torch.Tensor, w: float | None = None, max_sigma: float | None = None) -> Denoiser:
        """D(x; sigma) -> x_0 for `labels`, with classifier-free guidance of weight w at the noise levels sigma up to
        max_sigma (None: the model's own, as `plan` decides them). `sample` and `trajectory` draw through this, so
        a benchmark may replace it on one instance to try another denoiser."""
        if w is None or max_sigma is None:
            plan = self.plan(w=w, max_sigma=max_sigma)
            w, max_sigma = plan.w, plan.max_sigma
        return guided_denoiser(self.model, self.formulation, labels.to(self.device), null_class=self.null_class,
                               w=w, max_sigma=max_sigma)

    def network_evaluations(self, labels: torch.Tensor, plan: SamplingPlan) -> int:
        """Network evaluations per image under `plan`: 2 per denoiser call under classifier-free guidance, 1 at the
        noise levels above the guidance interval, plan.max_sigma (see guidance.passes_per_step and
        weight_in_interval)."""
        calls = evaluation_sigmas(plan.sampler, plan.sigmas)
        passes = passes_per_step(self.model, labels, null_class=self.null_class, w=plan.w)
        if passes == 1 or plan.max_sigma == math.inf or self.takes_w:
            return passes * len(calls)
        return len(calls) + int((calls <= plan.max_sigma).sum())

    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Noise at the grid's first sigma, of the formulation's prior_std (N(0, I) as a VP model sees it)."""
        return torch.randn((n, *self.image_shape), device=self.device, generator=generator) * self.formulation.prior_std()

    def _run(self, labels: torch.Tensor, x: torch.Tensor, plan: SamplingPlan, sigmas: torch.Tensor, generator,
             callback) -> torch.Tensor:
        """One batch under `plan`, walking `sigmas` (the plan's grid, moved to the model's device once per call of
        sample or trajectory)."""
        denoise = self.denoiser(labels, plan.w, plan.max_sigma)
        return check_sampler(plan.sampler)(denoise, x, sigmas, generator=generator,
                                           callback=callback, **plan.options())

    def _plan(self, plan: SamplingPlan | None, request: dict) -> SamplingPlan:
        if plan is not None and request:
            raise TypeError(f"give a plan or the keywords of Pipeline.plan, not both (got {', '.join(request)})")
        return plan if plan is not None else self.plan(**request)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, plan: SamplingPlan | None = None, *, seed: int = 0,
               batch_size: int | None = None, callback=None, **request) -> torch.Tensor:
        """Samples for `labels` in batches: float (N, C, H, W) in [-1, 1], on CPU.

        `plan` says how (see `plan`); without one, the keywords of `plan` make it: sampler and steps (None: the
        default; a sampler without steps: all T), eta for the samplers that take it (DDIM), the guidance weight w
        and its interval max_sigma (None: the model's own, as in the CLI).
        All initial noise is drawn first from the seeded generator, so every sampler run with the same seed starts
        from the same noise, whatever the batch size. `callback` gets each step's dict (see samplers).
        """
        plan = self._plan(plan, request)
        sigmas = plan.sigmas.to(self.device)
        batch_size = batch_size or default_batch_size(self.device)
        generator = make_generator(seed, self.device)
        noise = self.initial_noise(labels.shape[0], generator)
        out = []
        for start in range(0, labels.shape[0], batch_size):
            stop = start + batch_size
            out.append(self._run(labels[start:stop], noise[start:stop], plan, sigmas, generator, callback).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def trajectory(self, labels: torch.Tensor, plan: SamplingPlan | None = None, *, seed: int = 0,
                   **request) -> Trajectory:
        """Sample one batch and keep every step; its last frame equals `sample` with the same arguments."""
        plan = self._plan(plan, request)
        sigmas = plan.sigmas
        generator = make_generator(seed, self.device)
        x = self.initial_noise(labels.shape[0], generator)
        vp_view = lambda x, sigma: (x * (1 + sigma**2) ** -0.5).cpu()  # noqa: E731
        frames, predictions = [vp_view(x, float(sigmas[0]))], []

        def record(info):
            frames.append(vp_view(info["x"], float(sigmas[info["i"] + 1])))
            predictions.append(info["x0"].cpu())

        start = time.perf_counter()
        self._run(labels, x, plan, sigmas.to(self.device), generator, record)
        seconds = time.perf_counter() - start
        timesteps = None if plan.timesteps is None else list(plan.timesteps)
        return Trajectory(sigmas[:-1].tolist(), timesteps, torch.stack(frames), torch.stack(predictions),
                          seconds, plan.description)
