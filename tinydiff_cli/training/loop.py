"""One optimisation loop for `train` and `distill`: what a step minimises is an objective handed to it.

    plan = LoopPlan(LRSchedule(1e-3, warmup_steps=200), Budget(4000, seconds=600), batch_size=64, grad_clip=1.0)
    loop = Loop(model, objective, optimizer, ema, plan)
    with stop_on_signals(loop):
        reason = loop.run(after_step)

As in EDM's `training_loop` (Karras et al. 2022, NVlabs/edm), which takes its loss as an object, the loop knows nothing
of data, noise levels or teachers: `objective(step)` is the loss of step `step`'s batch. The loop owns what both
commands share: the step count and the clock across resumes, the LR schedule, gradient clipping, the non-finite guard
(nothing of a bad step is applied), fp16's grad scaler, the EMA, the stop rules (steps, minutes, a signal, rank 0's
word under DDP) and the loss window behind the progress display. Checkpoints, evals and previews are the caller's, in
`after_step`.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ..runtime.distributed import Dist, agree, mean_over_ranks
from .ema import EMA
from ..errors import TinydiffError
from .log import LossWindow, PrintReporter


class Objective(Protocol):
    def __call__(self, step: int) -> torch.Tensor:
        """The loss of step `step`'s batch (a scalar with a graph to the model's parameters)."""


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over the first `warmup_steps` steps, then constant or a cosine decay (Loshchilov & Hutter 2017,
    without restarts) from the peak where warm-up ended to 0 at the end of the run."""

    peak: float
    warmup_steps: int = 0
    cosine: bool = True

    def __call__(self, step: int, progress: float, decay_start: float = 0.0) -> float:
        """The rate of step `step` (0-based) when `progress` in [0, 1] of the run is done and warm-up ended at
        progress `decay_start` (by steps alone that is warmup_steps / total steps; under a time budget, the
        fraction of the time it had used)."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if not self.cosine:
            return self.peak
        done = min(max((progress - decay_start) / max(1.0 - decay_start, 1e-12), 0.0), 1.0)
        return self.peak * 0.5 * (1 + math.cos(math.pi * done))


@dataclass(frozen=True)
class Budget:
    """When a loop stops: after `steps` steps, or when `seconds` of its clock are used (whichever comes first).
    The phrases say why, in the caller's words."""

    steps: int
    seconds: float | None = None
    steps_used: str = ""  # e.g. "reached step 4000 (epochs=20, max_steps=4000)"
    time_used: str = ""  # e.g. "time budget of 10 min used"

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of the run done: by steps, or by the clock if that runs out first."""
        by_steps = step / self.steps
        return max(by_steps, elapsed_s / self.seconds) if self.seconds else by_steps

    def seconds_left(self, step: int, elapsed_s: float, steps_per_s: float) -> float:
        left = (self.steps - step) / max(steps_per_s, 1e-9)
        return left if self.seconds is None else min(left, max(0.0, self.seconds - elapsed_s))


@dataclass(frozen=True)
class LoopPlan:
    """What a loop does at each step: its rate, when it stops, and the step's settings."""

    schedule: LRSchedule
    budget: Budget
    batch_size: int  # images a step sees in all (under DDP, the global batch): for the speed and the time left
    grad_clip: float | None = None  # the gradient's largest norm; None: no clipping
    log_every: int = 10  # steps per logging window
    lr_name: str = "train.lr"  # the setting that a divergence message points at


class Diverged(TinydiffError):
    """The loss or the gradient of a step is NaN or infinite; nothing of that step was applied."""

    def __init__(self, step: int, what: str, lr: float, lr_name: str = "train.lr"):
        self.step = step
        super().__init__(f"training diverged at step {step}: {what}. The usual cause is too high a learning rate "
                         f"({lr_name} = {lr:g}); with fp16, an overflow")


class PreviewSkipped(KeyboardInterrupt):
    """Raised by the signal handler inside `Loop.skippable`."""


class Loop:
    """The state one loop carries (step, clock, where the LR decay started) and the step it takes; `run` repeats
    `train_step` until the budget, a signal or rank 0 says stop."""

    def __init__(self, model: torch.nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, ema: EMA,
                 plan: LoopPlan, *, reporter=None, dist: Dist = Dist(), scaler=None):
        self.model, self.objective, self.optimizer, self.ema = model, objective, optimizer, ema
        self.plan, self.dist, self.scaler = plan, dist, scaler
        self.schedule, self.budget = plan.schedule, plan.budget
        self.batch_size, self.grad_clip, self.log_every, self.lr_name = (plan.batch_size, plan.grad_clip,
                                                                         plan.log_every, plan.lr_name)
        self.reporter = reporter or PrintReporter()
        self.device = next(model.parameters()).device
        self.step, self.elapsed_before = 0, 0.0
        self.lr_decay_start: float | None = None  # progress when warm-up ended (saved: a resume keeps the curve)
        self.last_loss: float | None = None  # the mean of the last logging window, and its speed
        self.images_per_s, self.last_lr = 0.0, 0.0
        self.overflow_streak, self.fp16_patience = 0, 20  # fp16 steps in a row whose gradients overflowed
        self.stop_requested = False
        self.previewing = False  # a Ctrl-C now skips the preview (see `skippable`) instead of waiting for it
        self.window = LossWindow(self.device)
        self._session_start = time.perf_counter()

    # ---- the clock and the rate ----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of this loop across resumes."""
        return self.elapsed_before + time.perf_counter() - self._session_start

    def lr(self) -> float:
        progress = self.budget.progress(self.step, self.elapsed())
        if self.step >= self.schedule.warmup_steps and self.lr_decay_start is None:
            self.lr_decay_start = min(progress, 1.0)
        return self.schedule(self.step, progress, self.lr_decay_start or 0.0)

    def stop_reason(self) -> str:
        """Why the loop must stop now, or "" to go on. Under DDP only rank 0's clock counts (see `run`)."""
        b = self.budget
        if self.stop_requested:
            return "interrupted"
        if self.step >= b.steps:
            return b.steps_used or f"{b.steps} steps"
        if b.seconds is not None and self.elapsed() >= b.seconds and self.dist.is_main:
            return b.time_used or f"{b.seconds:g} s used"
        return ""

    # ---- one step ------------------------------------------------------------------------------------
    def train_step(self, lr: float) -> torch.Tensor:
        """One optimizer step on the objective's loss at this step, at rate `lr`; then the EMA follows."""
        loss = self.objective(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scale the loss so that small gradients do not underflow
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.fp16_step(grad_norm)
        else:
            # One host sync per step (free on a CPU): a non-finite loss or gradient stops the run before the update,
            # so the weights, the optimizer moments and the EMA stay those of the last good step. Under DDP the
            # gradient norm is the same on every rank (a NaN anywhere reaches all through the all-reduce).
            if not torch.isfinite(grad_norm if self.dist.enabled else loss.detach() + grad_norm):
                what = f"the loss is {loss.item():g}" if not loss.isfinite() else f"the gradient norm is {grad_norm.item():g}"
                raise Diverged(self.step + 1, what, self.schedule.peak, self.lr_name)
            self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return loss.detach()

    def fp16_step(self, grad_norm: torch.Tensor) -> None:
        """The GradScaler's step: an overflowed gradient skips the update and halves the scale, which is its normal
        working; `fp16_patience` skips in a row mean the numbers have left fp16's range for good."""
        patience = self.fp16_patience
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.overflow_streak = 0 if bool(torch.isfinite(grad_norm)) else self.overflow_streak + 1
        if self.overflow_streak >= patience:
            raise Diverged(self.step + 1, f"the fp16 gradients overflowed {patience} steps in a row (loss scale "
                                          f"{self.scaler.get_scale():g})", self.schedule.peak, self.lr_name)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, after_step: Callable[["Loop", dict | None], None] | None = None) -> str:
        """Step until told to stop; return why. `after_step(loop, metrics)` runs after every step, with the
        progress metrics (loss, lr, images_per_s, eta_s, elapsed_s) every `log_every` steps and None otherwise;
        time spent in it (checkpoints, evals, previews) does not count as throughput."""
        self._session_start, self.window = time.perf_counter(), LossWindow(self.device)
        while True:
            reason, lr_now = self.stop_reason(), self.lr()
            # every rank stops at the same step: when any was interrupted, or rank 0 says so (its clock is the one)
            stop, interrupted, lr_now = agree(self.dist, bool(reason), self.stop_requested, lr_now, self.device)
            if stop:
                reason = reason or ("interrupted" if interrupted else "rank 0 stopped the run")
                break
            self.last_lr = lr_now
            self.window.add(self.train_step(lr_now), self.batch_size)
            metrics = self.close_window() if self.step % self.log_every == 0 else None
            self.reporter.update(self.step, metrics)
            if after_step is not None:
                with self.window.paused():
                    after_step(self, metrics)
        if self.window.steps:  # the steps since the last logging window: the final progress line shows the end
            self.reporter.update(self.step, {**self.close_window(final=True), "eta_s": 0.0})
        return reason

    def close_window(self, final: bool = False) -> dict:
        """The logging window's mean loss (over all ranks: the global batch's; each rank counts the global batch's
        images already) and speed, and the time left. The `final`, partial window shows in the progress display but
        is not the run's `last_loss` and `images_per_s`: those are a full window's, as loss.csv has them."""
        loss, images_per_s = self.window.close(lambda total, images: (mean_over_ranks(self.dist, total), images))
        if not final:
            self.last_loss, self.images_per_s = loss, images_per_s
        eta = self.budget.seconds_left(self.step, self.elapsed(), images_per_s / self.batch_size)
        return {"loss": loss, "lr": self.last_lr, "images_per_s": images_per_s, "eta_s": eta,
                "elapsed_s": self.elapsed()}

    # ---- stopping --------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step (what Ctrl-C does); the caller saves."""
        self.stop_requested = True

    @contextmanager
    def skippable(self, what: str):
        """A preview or sample-quality eval that a Ctrl-C cuts short (it is written atomically, so it is then simply
        absent) rather than one the user has to wait out; the stop it requests still saves."""
        self.previewing = True
        try:
            yield
        except PreviewSkipped:
            self.reporter.log(f"Ctrl-C: {what} skipped")
        finally:
            self.previewing = False


@contextmanager
def stop_on_signals(loop: Loop):
    """The first Ctrl-C (or SIGTERM) asks the loop to stop after the current step, and skips a preview in
    progress; a second aborts. Signal handlers can only be installed from the main thread; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if loop.stop_requested:
            raise KeyboardInterrupt
        loop.request_stop()
        if loop.previewing:
            raise PreviewSkipped
        loop.reporter.log("stopping after this step and saving (press Ctrl-C again to abort without saving)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
