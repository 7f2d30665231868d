"""What several commands share: the sampling options, loading the pipeline, and checks that fail before the
expensive part, each with one clear line."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..io.checkpoint import Checkpoint, find_latest_checkpoint, load_checkpoint
from ..runtime.device import pick_device
from ..errors import TinydiffError
from ..sampling.pipeline import Pipeline
from ..sampling.plan import SamplingPlan, SamplingRequest, plan_sampling


# More images than any measurement here needs (FID is quoted at 5,000-50,000); a larger --n is a typo, and would
# hold gigabytes of images in memory before the first is written.
MAX_IMAGES = 200_000


def check_at_most_max_images(n: int, flag: str = "--n") -> None:
    if n > MAX_IMAGES:
        raise TinydiffError(f"{flag} must be at most {MAX_IMAGES:,} images, got {n:,}")


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling flags: the request for `plan_sampling` (sampler, steps, eta, w, w_max_sigma; None: the model's
    own, see sampling/plan.py), the seed and the images per forward batch (None: the device's default)."""

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

    @property
    def request(self) -> SamplingRequest:
        return SamplingRequest(self.sampler, self.steps, self.eta, self.w, self.w_max_sigma, self.steps_flag)

    def plan(self, ckpt: Checkpoint, **changes) -> SamplingPlan:
        """The plan for these flags (with `changes` to the request) on the checkpoint's model, every flag checked
        before anything is loaded."""
        if self.batch_size is not None and self.batch_size < 1:
            raise TinydiffError("--n and --batch-size must be at least 1")
        return plan_for(ckpt, replace(self.request, **changes))


def plan_for(ckpt: Checkpoint, request: SamplingRequest = SamplingRequest()) -> SamplingPlan:
    """`plan_sampling` for a checkpoint, from its config alone."""
    return plan_sampling(ckpt.config.diffusion.formulation(), ckpt.config, ckpt.distilled, request)


def open_checkpoint(checkpoint: Path | None) -> Checkpoint:
    """--checkpoint, or the newest run under runs/: its config and data facts, without building the model, so
    that every flag can be checked against them first."""
    return load_checkpoint(checkpoint or find_latest_checkpoint("runs"))


def load_pipeline(ckpt: Checkpoint, device: str = "auto", weights: str = "ema") -> Pipeline:
    """The checkpoint's model on the chosen device."""
    return Pipeline.from_checkpoint(ckpt, device=pick_device(device), weights=weights)


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
