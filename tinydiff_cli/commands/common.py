"""What several commands share: the sampling options, loading the pipeline, and checks that fail before the
expensive part, each with one clear line."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checkpoint import Checkpoint, find_latest_checkpoint, load_checkpoint
from ..device import pick_device
from ..errors import TinydiffError
from ..diffusion.sampling import sampling_sigmas
from ..pipeline import Pipeline, default_guidance, default_max_sigma, formulation_of, resolve_sampling


# More images than any measurement here needs (FID is quoted at 5,000-50,000); a larger --n is a typo, and would
# hold gigabytes of images in memory before the first is written.
MAX_IMAGES = 200_000
MAX_STEPS = 10_000  # sampling steps of a continuous formulation (edm, flow), which has no T to bound them


def check_at_most_max_images(n: int, flag: str = "--n") -> None:
    if n > MAX_IMAGES:
        raise TinydiffError(f"{flag} must be at most {MAX_IMAGES:,} images, got {n:,}")


@dataclass(frozen=True)
class SamplingOptions:
    """How to draw: a sampler from the registry and its steps (both None: the model's default, see
    pipeline.resolve_sampling; a sampler without steps: all T), eta (for samplers that take it), the guidance weight
    w (None: the model's own, pipeline.default_guidance) and the noise level sigma_t up to which it applies (None: the
    model's own, pipeline.default_max_sigma; inf: every step), the seed and the images per forward batch (None: the
    device's default)."""

    sampler: str | None = None
    steps: int | None = None
    eta: float = 0.0
    w: float | None = None
    seed: int = 0
    batch_size: int | None = None
    w_max_sigma: float | None = None
    steps_flag: str = field(default="--steps", compare=False)  # which flag set `steps`, for error messages

    @classmethod
    def from_flags(cls, *, ddim: int | None, sampler: str | None, steps: int | None, eta: float, w: float | None,
                   seed: int, w_max_sigma: float | None = None, batch_size: int | None = None) -> "SamplingOptions":
        """`--ddim N` is short for `--sampler ddim --steps N`; with neither, the model's default."""
        if ddim is not None:
            if sampler not in (None, "ddim") or steps is not None:
                raise TinydiffError("--ddim N is short for --sampler ddim --steps N; give one or the other")
            return cls("ddim", ddim, eta, w, seed, batch_size, w_max_sigma, "--ddim")
        return cls(sampler, steps, eta, w, seed, batch_size, w_max_sigma)

    def sample_kwargs(self) -> dict:
        """Keyword arguments for Pipeline.sample."""
        return {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "w": self.w, "seed": self.seed,
                "batch_size": self.batch_size}

    @property
    def guidance(self) -> str:
        """'w=0.5', or 'w=0.5 at sigma <= 5.42' when guidance applies on an interval (after `resolve`)."""
        interval = self.w_max_sigma is not None and self.w_max_sigma != math.inf and self.w
        return f"w={self.w:g}" + (f" at sigma <= {self.w_max_sigma:g}" if interval else "")

    def resolve(self, ckpt: Checkpoint) -> "SamplingOptions":
        """These options with the checkpoint's defaults filled in, each checked against the registry, the model's T
        and what a distilled model was distilled for, before anything is loaded."""
        formulation = formulation_of(ckpt.config)
        T = formulation.T if formulation.discrete else None
        w = default_guidance(ckpt.config, ckpt.distilled) if self.w is None else self.w
        if self.steps is not None and not 1 <= self.steps <= (T or MAX_STEPS):
            limit = f"the model's T={T}" if T else f"{MAX_STEPS:,}"
            raise TinydiffError(f"{self.steps_flag} must be between 1 and {limit}, got {self.steps}")
        sampler, steps = resolve_sampling(ckpt.distilled, self.sampler, self.steps, w, self.eta, T)
        try:
            sampling_sigmas(formulation, sampler, steps)  # an unknown name, or steps the sampler cannot take
        except ValueError as e:
            raise TinydiffError(str(e)) from None
        if not 0 <= self.eta <= 1:
            raise TinydiffError(f"--eta must be in [0, 1], got {self.eta}")
        if self.batch_size is not None and self.batch_size < 1:
            raise TinydiffError("--n and --batch-size must be at least 1")
        return replace(self, sampler=sampler, steps=steps, w=w, w_max_sigma=self.resolve_max_sigma(ckpt))

    def resolve_max_sigma(self, ckpt: Checkpoint) -> float:
        """--w-max-sigma checked, or the model's own; inf for a distilled student, which learned its teacher's
        guidance and applies it at every step."""
        if not (self.w_max_sigma is None or self.w_max_sigma > 0):  # also refuses nan
            raise TinydiffError(f"--w-max-sigma must be positive (inf: guidance at every step), got {self.w_max_sigma}")
        if ckpt.distilled is not None:
            if self.w_max_sigma not in (None, math.inf):
                raise TinydiffError("--w-max-sigma does not apply to a distilled model: it learned its teacher's "
                                    "guidance, interval included; leave the flag out")
            return math.inf
        return default_max_sigma(ckpt.config) if self.w_max_sigma is None else self.w_max_sigma


def open_checkpoint(checkpoint: Path | None) -> Checkpoint:
    """--checkpoint, or the newest run under runs/: its config and data facts, without building the model, so
    that every flag can be checked against them first."""
    return load_checkpoint(checkpoint or find_latest_checkpoint("runs"))


def load_pipeline(ckpt: Checkpoint, device: str = "auto", weights: str = "ema",
                  w_max_sigma: float | None = None) -> Pipeline:
    """The checkpoint's model on the chosen device, guiding at sigma_t <= w_max_sigma (None: the model's own)."""
    pipe = Pipeline.from_checkpoint(ckpt, device=pick_device(device), weights=weights)
    pipe.w_max_sigma = w_max_sigma
    return pipe


def parse_digit(digit: str, class_names) -> str | int | None:
    """--digit: 'all', 'none', a class name (exact, else ignoring case) or a class index."""
    if digit in ("all", "none"):
        return digit
    num_classes = len(class_names)
    if not num_classes:
        raise TinydiffError(f"this model has no classes (it was trained on a folder without class subfolders); "
                            f"leave out --digit, got '{digit}'")
    names = [str(name) for name in class_names]
    if digit in names:  # a name first: folders named "1", "10", "2" sort as text, so "1" is not always index 1
        return names.index(digit)
    if digit.isdigit() and 0 <= int(digit) < num_classes:
        return int(digit)
    found = [i for i, name in enumerate(names) if name.lower() == digit.lower()]
    if len(found) == 1:
        return found[0]
    if names == [str(i) for i in range(num_classes)]:  # MNIST: the names are the indices
        raise TinydiffError(f"--digit must be 0..{num_classes - 1}, 'all' or 'none', got '{digit}'")
    listed = ", ".join(names[:12]) + (", ..." if num_classes > 12 else "")
    raise TinydiffError(f"--digit must be a class index 0..{num_classes - 1}, a class name ({listed}), 'all' or "
                        f"'none', got '{digit}'")


def check_output(*paths: Path | None) -> None:
    """Fail before the expensive part, not after it."""
    for path in paths:
        if path is not None and path.is_dir():
            raise TinydiffError(f"{path} is a folder; give a file name such as {path / 'samples.png'}")


def source_of(ckpt: Checkpoint) -> str:
    """'runs/x/last.json (step 2602)': where a model came from, for the commands' first line."""
    return f"{ckpt.json_path} (step {ckpt.step})"
