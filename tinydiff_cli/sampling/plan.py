"""How one draw goes, decided in one place: sampler, sigma grid, guidance weight and interval, eta.

    plan = plan_sampling(config.diffusion.formulation(), config, distilled, SamplingRequest(sampler="ddim", steps=10))
    plan.sampler, plan.sigmas, plan.w, plan.max_sigma   # 'ddim', 11 noise levels ending at 0, the model's w, inf

Every command, the app, `Pipeline.sample`/`trajectory` and the sampler comparison ask `plan_sampling` and then use
the plan as it is; nothing is filled in or patched afterwards. The request says what was asked for (None: the
model's own), the plan what will run. `plan_sampling` needs the model's config and formulation only, not its
weights, so a command checks every flag before it loads anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..io.checkpoint import DistillInfo
from ..config import Config
from ..diffusion.formulations import Formulation
from ..diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, sampler_label, sampler_options, sampling_sigmas
from ..errors import TinydiffError

MAX_STEPS = 10_000  # sampling steps of a continuous formulation (edm, flow), which has no T to bound them


@dataclass(frozen=True)
class SamplingRequest:
    """What a caller asks for; None is "the model's own". sampler and steps both None: sampling.DEFAULT_SAMPLER with
    DEFAULT_STEPS (a distilled student: its own); a sampler without steps: all T of a discrete schedule. w: the
    config's train.sample_w (moved inside a student's range); max_sigma, the upper end of the guidance interval: the
    config's train.sample_w_max_sigma, inf (every step) when it has none."""

    sampler: str | None = None
    steps: int | None = None
    eta: float = 0.0
    w: float | None = None
    max_sigma: float | None = None
    steps_flag: str = field(default="--steps", compare=False)  # how `steps` was spelled, for the error message


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """What will run: `sampler` (a samplers.SAMPLERS name) over `sigmas` (descending, ending at 0, on CPU), guided with
    weight w at the noise levels up to max_sigma (inf: every step), eta for the samplers that take it."""

    sampler: str
    sigmas: torch.Tensor
    w: float
    max_sigma: float
    eta: float = 0.0
    distilled: bool = False  # a student from `tinydiff distill`, sampling as it was distilled to
    timesteps: tuple[int, ...] | None = None  # each step's t, for a discrete schedule

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def label(self) -> str:
        """'DDIM-10', 'DDPM-1000', 'distilled DDIM-2'."""
        return ("distilled " if self.distilled else "") + sampler_label(self.sampler, self.sigmas)

    @property
    def description(self) -> str:
        """The label with eta for the samplers that take it: 'DDIM-10 (eta=0)'."""
        return f"{self.label} (eta={self.eta:g})" if "eta" in self.options() else self.label

    @property
    def guidance(self) -> str:
        """'w=0.5', or 'w=0.5 at sigma <= 5.42' when guidance applies on an interval."""
        interval = self.max_sigma != math.inf and self.w
        return f"w={self.w:g}" + (f" at sigma <= {self.max_sigma:g}" if interval else "")

    def options(self) -> dict:
        """The keyword options the sampler function takes (eta for DDIM)."""
        return sampler_options(self.sampler, eta=self.eta)


def plan_sampling(formulation: Formulation, config: Config, distilled: DistillInfo | None,
                  request: SamplingRequest = SamplingRequest()) -> SamplingPlan:
    """The plan for `request` on a model of `config` and `formulation` (distilled: what a student was distilled for),
    every choice checked: a TinydiffError with one line says what is wrong."""
    T = formulation.T if formulation.discrete else None
    if request.steps is not None and not 1 <= request.steps <= (T or MAX_STEPS):
        limit = f"the model's T={T}" if T else f"{MAX_STEPS:,}"
        raise TinydiffError(f"{request.steps_flag} must be between 1 and {limit}, got {request.steps}")
    if not 0 <= request.eta <= 1:
        raise TinydiffError(f"--eta must be in [0, 1], got {request.eta}")
    if not (request.max_sigma is None or request.max_sigma > 0):  # also refuses nan
        raise TinydiffError(f"--w-max-sigma must be positive (inf: guidance at every step), got {request.max_sigma}")
    w = config.train.sample_w if request.w is None else request.w
    if distilled is not None:
        sampler, steps, max_sigma = student_choices(distilled, request)
        w = min(max(w, distilled.w_min), distilled.w_max) if request.w is None else w
        if not distilled.w_min <= w <= distilled.w_max:
            raise TinydiffError(f"this model learned guidance weights w in [{distilled.w_min:g}, "
                                f"{distilled.w_max:g}]; got --w {w:g}")
    else:
        sampler = request.sampler or DEFAULT_SAMPLER
        steps = (request.steps or min(DEFAULT_STEPS, T or DEFAULT_STEPS)) if request.sampler is None else request.steps
        own = config.train.sample_w_max_sigma
        max_sigma = request.max_sigma if request.max_sigma is not None else math.inf if own is None else own
    try:
        sigmas = sampling_sigmas(formulation, sampler, steps).cpu()  # an unknown name, or steps it cannot take
    except ValueError as e:
        raise TinydiffError(str(e)) from None
    timesteps = tuple(round(t) for t in formulation.timestep(sigmas[:-1]).tolist()) if T else None
    return SamplingPlan(sampler, sigmas, float(w), float(max_sigma), float(request.eta), distilled is not None,
                        timesteps)


def student_choices(distilled: DistillInfo, request: SamplingRequest) -> tuple[str, int, float]:
    """(sampler, steps, max_sigma) of a distilled student: the ones it was distilled for, deterministic, guided at
    every step (it learned its teacher's guidance, interval included)."""
    sampler, steps = request.sampler or distilled.sampler, request.steps or distilled.steps
    if sampler != distilled.sampler or steps != distilled.steps or request.eta:
        teacher = f" ({distilled.teacher})" if distilled.teacher else ""
        plural = "s" if distilled.steps > 1 else ""
        raise TinydiffError(f"this model was distilled to sample with deterministic {distilled.sampler} in "
                            f"{distilled.steps} step{plural}; leave out the sampler flags (--sampler, --steps, --ddim, "
                            f"--eta), or sample its teacher{teacher} for other samplers and step counts")
    if request.max_sigma not in (None, math.inf):
        raise TinydiffError("--w-max-sigma does not apply to a distilled model: it learned its teacher's guidance, "
                            "interval included; leave the flag out")
    return sampler, steps, math.inf
