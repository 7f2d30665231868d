"""The training loop: data in memory, AdamW with warm-up and cosine LR, gradient clipping, EMA, the Min-SNR loss,
per-epoch eval loss and sample grid, atomic checkpoints that resume exactly where they stopped.

    trainer = Trainer(load_config("unet-small"), out_dir="runs/unet-small", device=pick_device())
    result = trainer.run()

`Trainer.run` is the whole loop, top to bottom. The checkpoint format is in checkpoint.py, the CSV and progress
output in train_log.py, the evals in train_eval.py.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .atomic import StorageError, write_text_atomic
from .checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from .config import Config, adapt_to_image_size, used_settings, validate
from .distributed import (Dist, agree, first_on_each_machine, is_collective_failure, mean_over_ranks,
                          reseed_other_ranks)
from .data import load_dataset, to_model_range
from .ema import EMA
from .errors import TinydiffError
from .images import save_loss_plot
from .diffusion.loss import diffusion_loss, draw_noise
from .models import build_model, check_model_size
from .pipeline import Pipeline, make_generator
from .precision import grad_scaler, prepare, resolve_precision
from .train_eval import SampleQuality, eval_loss, save_sample_grid
from .train_log import LossWindow, NullLog, PrintReporter, QuietReporter, TrainLog


@dataclass
class TrainResult:
    step: int
    stop_reason: str
    checkpoint: Path
    train_loss: float | None
    eval_loss: float | None
    images_per_s: float
    elapsed_s: float  # the whole run, across resumes
    session_s: float  # this session only
    epoch: float  # epochs trained in all (steps / steps per epoch)


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warm-up over train.warmup_steps, then cosine decay to 0 over progress in [0, 1] (or constant)."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if t.lr_schedule == "cosine" else 1.0
    return t.lr * warm * decay


class Trainer:
    """Holds a run's data (in memory, on the device), model, EMA copy, optimizer and RNG stream; `train_step` is one
    optimizer step and `run` the loop."""

    def __init__(self, cfg: Config, out_dir: str | Path, device: torch.device, reporter=None, dist: Dist = Dist()):
        self.cfg, self.out_dir, self.device, self.dist = cfg, Path(out_dir), torch.device(device), dist
        dist.check_batch(cfg.train.batch_size)
        self.reporter = (reporter or PrintReporter()) if dist.is_main else QuietReporter()  # rank 0 alone speaks
        torch.manual_seed(cfg.train.seed)
        with first_on_each_machine(dist):  # one process per machine may download or decode the data; the others read it
            d = cfg.data
            dataset = load_dataset(d.dataset, d.data_dir, image_size=d.image_size, channels=d.channels,
                                   progress=getattr(self.reporter, "loading", None))  # optional in the protocol
        self.train_split, self.test_split = dataset.train.to(self.device), dataset.test.to(self.device)
        self.data = info = dataset.info
        # The presets are written for 28x28; other sizes move the UNet's attention and the DiT's patch (see
        # config.adapt_to_image_size), and the config that checkpoints record is the adapted one.
        model_cfg, adapted = adapt_to_image_size(cfg.model, info.image_size)
        self.cfg = cfg = validate(dataclasses.replace(cfg, model=model_cfg), info.image_size)
        for line in dataset.notes + adapted:
            self.reporter.log(line)
        if len(self.train_split) < cfg.train.batch_size:
            raise TinydiffError(f"the training split has {len(self.train_split)} images, fewer than one batch "
                                f"(train.batch_size {cfg.train.batch_size}); use --batch-size {len(self.train_split)} "
                                f"or less, or add images")
        if cfg.train.eval_every and not info.labelled:
            raise TinydiffError(f"train.eval_every asks for FID and class accuracy during training, but {info.dataset} "
                                f"has no class subfolders (the classifier they need learns labels); leave eval_every at 0")
        check_model_size(cfg.model, info.image_size, info.channels, info.num_classes)
        self.model = build_model(cfg.model, info.image_size, info.channels, info.num_classes).to(self.device)
        # Under torchrun the forward and backward go through DDP, which averages the gradients over the ranks; the
        # EMA, the optimizer and the checkpoints hold the plain module.
        self.precision = cfg.train.precision if cfg.train.precision != "auto" else resolve_precision("auto", self.device)
        self.net = prepare(self.model, self.precision, cfg.train.compile)  # autocast and torch.compile, as asked
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
            reseed_other_ranks(dist, cfg.train.seed, step=0)  # after DDP has broadcast rank 0's initial weights
        self.scaler = grad_scaler(self.precision, self.device)  # fp16 only
        self.overflow_streak, self.fp16_patience = 0, 20  # fp16 steps in a row whose gradients overflowed
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema_pipeline = Pipeline.from_model(self.ema.ema_model, cfg, self.data)  # previews and evals
        self.formulation = self.ema_pipeline.formulation
        self.generator = make_generator(cfg.train.seed, self.device)  # timesteps, noise, label dropout
        self.state = TrainState(self.model, self.ema.ema_model, self.optimizer, self.generator)
        self.step, self.elapsed_before = 0, 0.0
        self.last_train_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.stop_requested = False
        self.previewing = False  # a Ctrl-C now skips the preview (see `skippable`) instead of waiting for it
        self._permutation: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its data order)

    # ---- sizes and budgets -------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_split) // self.cfg.train.batch_size)

    @property
    def total_steps(self) -> int:
        t = self.cfg.train
        total = t.epochs * self.steps_per_epoch
        return min(total, t.max_steps) if t.max_steps else total

    def progress(self, elapsed_s: float) -> float:
        """Fraction of the run done: by steps, or by the wall-clock budget if that runs out first."""
        by_steps = self.step / self.total_steps
        minutes = self.cfg.train.max_minutes
        return max(by_steps, elapsed_s / (60 * minutes)) if minutes else by_steps

    def stop_reason(self, elapsed_s: float) -> str:
        """Why the run must stop now, or "" to go on. Under DDP only rank 0's clock counts (see `run`)."""
        t = self.cfg.train
        if self.stop_requested:
            return "interrupted"
        if self.step >= self.total_steps:
            return f"reached step {self.total_steps} (epochs={t.epochs}, max_steps={t.max_steps})"
        if t.max_minutes and elapsed_s >= 60 * t.max_minutes and self.dist.is_main:
            return f"time budget of {t.max_minutes:g} min used"
        return ""

    def eta_seconds(self, images_per_s: float, elapsed_s: float) -> float:
        eta = (self.total_steps - self.step) * self.cfg.train.batch_size / max(images_per_s, 1e-9)
        if self.cfg.train.max_minutes:
            eta = min(eta, max(0.0, 60 * self.cfg.train.max_minutes - elapsed_s))
        return eta

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save(self, name: str, elapsed_s: float) -> Path:
        """Write checkpoint `name` (atomically); never one with a NaN or infinite weight."""
        tensors = self.state.tensors()
        if not all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point()):
            raise Diverged(self.step, "the weights are no longer finite (not saved)", self.cfg.train.lr)
        extra = {"epoch": self.step // self.steps_per_epoch, "elapsed_s": elapsed_s, "tinydiff_version": __version__,
                 "optimizer": self.state.optimizer_settings(),
                 "train_loss": self.last_train_loss, "eval_loss": self.last_eval_loss, "data": self.data.to_meta(),
                 "world_size": self.dist.world_size,
                 "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}
        return save_checkpoint(self.out_dir, name, config=self.cfg, step=self.step, tensors=tensors, extra=extra)

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from a training checkpoint: its state (see TrainState), step, elapsed time and last losses."""
        self.state.restore(ckpt)
        reseed_other_ranks(self.dist, self.cfg.train.seed, step=ckpt.step)  # the checkpoint holds rank 0's stream
        if self.scaler is not None and ckpt.meta.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt.meta["grad_scaler"])
        self.step = ckpt.step
        self.elapsed_before = float(ckpt.meta.get("elapsed_s", 0.0))
        self.last_train_loss, self.last_eval_loss = ckpt.meta.get("train_loss"), ckpt.meta.get("eval_loss")

    # ---- one step ----------------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] and labels of the step's batch. The epoch's permutation is a function of (seed, epoch),
        so a resumed run draws the same batches; it is built once per epoch and kept on the device."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._permutation[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(len(self.train_split), generator=g).to(self.device))
        bs = self.cfg.train.batch_size
        idx = self._permutation[1][within * bs:(within + 1) * bs][self.dist.rows(bs)]  # this rank's rows
        return to_model_range(self.train_split.images[idx]), self.train_split.labels[idx]

    def train_step(self, lr: float) -> torch.Tensor:
        x0, labels = self.batch(self.step)
        # Label dropout, timesteps and noise are drawn for the whole global batch, in one order from one stream, and
        # each rank keeps its rows: so N ranks compute what one process computes with the same global batch.
        bs, rows, g = self.cfg.train.batch_size, self.dist.rows(self.cfg.train.batch_size), self.generator
        drop = (torch.rand(bs, device=self.device, generator=g) < self.cfg.diffusion.p_uncond)[rows]
        labels = torch.where(drop, torch.full_like(labels, self.data.num_classes), labels)  # label dropout: null class
        level, eps = draw_noise(self.formulation, (bs, *x0.shape[1:]), self.device, g)
        loss = diffusion_loss(self.net, self.formulation, x0, labels, min_snr_gamma=self.cfg.diffusion.min_snr_gamma,
                              noise=(level[rows], eps[rows]))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scale the loss so that small gradients do not underflow
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip or float("inf"))
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
                raise Diverged(self.step + 1, what, self.cfg.train.lr)
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
                                          f"{self.scaler.get_scale():g})", self.cfg.train.lr)

    def window_reduce(self, loss_sum: torch.Tensor, images: int) -> tuple[torch.Tensor, int]:
        """A logging window's loss over all ranks (the global batch's mean). Its images are already the job's: each
        rank counts the global batch of every step."""
        return mean_over_ranks(self.dist, loss_sum), images

    def request_stop(self) -> None:
        """Stop after the current step and save `last` (what Ctrl-C does)."""
        self.stop_requested = True

    @contextmanager
    def skippable(self, what: str):
        """A preview or sample-quality eval that a Ctrl-C cuts short (it is written atomically, so it is then simply
        absent) rather than one the user has to wait out; the stop it requests still saves `last`."""
        self.previewing = True
        try:
            yield
        except PreviewSkipped:
            self.reporter.log(f"Ctrl-C: {what} skipped")
        finally:
            self.previewing = False

    @contextmanager
    def failures_explained(self):
        """A run ended by a full disk, a vanished folder or divergence stops the progress display and says which
        checkpoint is the newest good one and how to go on from it."""
        try:
            yield
        except RuntimeError as e:  # under DDP: a collective failed because another rank died or hung
            if not (self.dist.enabled and is_collective_failure(e)):
                raise
            self.reporter.finish()
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise TinydiffError(f"another process of this {self.dist.world_size}-process job failed or was killed "
                                f"({first_line}). {self.how_to_continue('start the job again')}") from None
        except TinydiffError as e:
            self.reporter.finish()
            if not isinstance(e, (StorageError, Diverged)):
                raise
            fix = "after freeing space" if isinstance(e, StorageError) else "with a lower learning rate"
            lr = f" --lr {self.cfg.train.lr / 4:g}" if isinstance(e, Diverged) else ""
            raise TinydiffError(f"{e}. {self.how_to_continue(fix, lr)}") from None

    def how_to_continue(self, fix: str, extra_flags: str = "") -> str:
        """Which checkpoint is the newest good one, and the command that continues from it."""
        newest = self.newest_checkpoint()
        if newest is None:
            return "No checkpoint was written yet" + ("; start again with a lower --lr" if "--lr" in extra_flags else "")
        path, step = newest
        target = self.out_dir if path.name == "last.json" else path
        return (f"The newest good checkpoint is {path} (step {step}); {fix}, continue with: "
                f"{self.dist.train_command} --resume {target}{extra_flags}")

    def newest_checkpoint(self) -> tuple[Path, int] | None:
        """(path, step) of the run folder's checkpoint with the highest step that loads, or None."""
        found = []
        for path in [self.out_dir / "last.json", *self.out_dir.glob("ckpt_*.json")]:
            try:
                found.append((load_checkpoint(path).step, path.name == "last.json", path))
            except TinydiffError:
                continue
        return (max(found)[2], max(found)[0]) if found else None

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t, out, main = self.cfg.train, self.out_dir, self.dist.is_main  # rank 0 alone writes (see distributed.py)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "config.yaml", _yaml(used_settings(self.cfg)))
        start_step, saved_step, saved_s, session_start = self.step, None, 0.0, time.perf_counter()
        elapsed = lambda: self.elapsed_before + time.perf_counter() - session_start  # noqa: E731  across resumes
        quality = SampleQuality(self.cfg, self.device, self.reporter.log)
        window, images_per_s = LossWindow(self.device), 0.0
        self.reporter.start(self.total_steps, self.step)
        log = TrainLog(out / "loss.csv", resume_step=self.step) if main else NullLog()
        # the signal handlers outermost: a SIGTERM (torchrun sends one when another rank dies) cannot cut short the
        # message that explains a failure
        with stop_on_signals(self), self.failures_explained(), log:
            while True:
                stop_reason, lr = self.stop_reason(elapsed()), lr_at(self.cfg, self.step, self.progress(elapsed()))
                # every rank stops at the same step: when any was interrupted, or rank 0 says so (its clock is the one)
                stop, interrupted, lr = agree(self.dist, bool(stop_reason), self.stop_requested, lr, self.device)
                if stop:
                    stop_reason = stop_reason or ("interrupted" if interrupted else "rank 0 stopped the run")
                    break
                step_lr = lr
                window.add(self.train_step(lr), t.batch_size)
                epoch, end_of_epoch = self.step / self.steps_per_epoch, self.step % self.steps_per_epoch == 0
                metrics = None
                if self.step % t.log_every == 0:
                    if main and not out.is_dir():
                        self.save("last", elapsed())  # atomic_path makes the folder again
                        raise TinydiffError(
                            f"the run folder {out} disappeared while training (deleted, or its disk unmounted); it was "
                            f"made again and `last` (step {self.step}) saved in it, but loss.csv and the earlier "
                            f"checkpoints are gone. Continue with: {self.dist.train_command} --resume {out}")
                    self.last_train_loss, images_per_s = window.close(self.window_reduce)
                    log.write(step=self.step, epoch=epoch, train_loss=self.last_train_loss, lr=lr,
                              images_per_s=images_per_s, elapsed_s=elapsed())
                    metrics = {"loss": self.last_train_loss, "lr": lr, "images_per_s": images_per_s,
                               "eta_s": self.eta_seconds(images_per_s, elapsed()), "elapsed_s": elapsed()}
                self.reporter.update(self.step, metrics)

                if not main:
                    continue  # the others wait for rank 0's checkpoints, evals and grids in the next all-reduce
                with window.paused():
                    if self.step % t.checkpoint_every == 0:
                        self.save(f"ckpt_{self.step:07d}", elapsed())
                    if t.eval_every and self.step % t.eval_every == 0 and not self.stop_requested:
                        with self.skippable("sample-quality eval"):
                            score = quality(self.ema_pipeline)
                            log.write(step=self.step, epoch=epoch, lr=lr, images_per_s=images_per_s,
                                      elapsed_s=elapsed(), score=score)
                            self.reporter.log(f"step {self.step}: FID@{score.n} {score.fid:.2f} (real-data floor "
                                              f"{score.fid_real_floor:.2f}), class accuracy {score.class_accuracy:.1%}")
                    if end_of_epoch:
                        self.last_eval_loss = eval_loss(self.ema_pipeline, self.test_split, n=t.eval_images,
                                                        min_snr_gamma=self.cfg.diffusion.min_snr_gamma)
                        log.write(step=self.step, epoch=round(epoch), eval_loss=self.last_eval_loss, lr=lr,
                                  images_per_s=images_per_s, elapsed_s=elapsed())
                        saved_step, saved_s, grid = self.step, elapsed(), None
                        self.save("last", saved_s)
                        save_loss_plot(out / "loss.csv", out / "loss.png")
                        if not self.stop_requested:  # after a Ctrl-C, no preview
                            with self.skippable("sample grid"):
                                grid = save_sample_grid(self.ema_pipeline,
                                                        out / "samples" / f"epoch_{round(epoch):03d}.png", self.cfg)
                        self.reporter.log(epoch_summary(round(epoch), self.step, self.last_train_loss,
                                                        self.last_eval_loss, grid))

            if window.steps:  # the steps since the last logging window: the final progress line shows the end
                loss, speed = window.close(self.window_reduce)
                self.reporter.update(self.step, {"loss": loss, "lr": step_lr, "images_per_s": speed, "eta_s": 0.0,
                                                 "elapsed_s": elapsed()})
            # still under the signal handlers: a Ctrl-C now cannot cut the final save short. `last` comes first, so
            # a Ctrl-C during the preview after it (slow on a busy machine) loses nothing and exits at once.
            # what `last` records: the run's time, without the previews after its last step
            end_s = saved_s if self.step == saved_step else elapsed()
            if main and self.step not in (saved_step, start_step):
                self.save("last", end_s)
                if stop_reason != "interrupted" and not self.stop_requested:  # a Ctrl-C means out, not a preview
                    with self.skippable("final sample grid"):
                        save_sample_grid(self.ema_pipeline, out / "samples" / "final.png", self.cfg)
        if main and (out / "loss.csv").exists():
            save_loss_plot(out / "loss.csv", out / "loss.png")
        self.reporter.finish()
        if self.step == start_step:
            self.reporter.log(f"nothing to train: {stop_reason}")
        return TrainResult(self.step, stop_reason, out / "last.json", self.last_train_loss, self.last_eval_loss,
                           images_per_s, end_s, end_s - self.elapsed_before, self.step / self.steps_per_epoch)


def epoch_summary(epoch: int, step: int, train_loss: float | None, eval_loss: float | None, grid: Path | None) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"epoch {epoch}: step {step}, train loss {fmt(train_loss)}, eval loss {fmt(eval_loss)}"
            + (f", samples {grid}" if grid else ""))


class Diverged(TinydiffError):
    """The loss or the gradient of a step is NaN or infinite; nothing of that step was applied."""

    def __init__(self, step: int, what: str, lr: float):
        self.step = step
        super().__init__(f"training diverged at step {step}: {what}. The usual cause is too high a learning rate "
                         f"(train.lr = {lr:g}); with fp16, an overflow")


class PreviewSkipped(KeyboardInterrupt):
    """Raised by the signal handler inside `Trainer.skippable`."""


@contextmanager
def stop_on_signals(trainer):
    """The first Ctrl-C (or SIGTERM) asks the trainer (or distiller) to stop after the current step and save, and
    skips a preview in progress; a second aborts. Signal handlers can only be installed from the main thread;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()
        if getattr(trainer, "previewing", False):
            raise PreviewSkipped
        trainer.reporter.log("stopping after this step and saving (press Ctrl-C again to abort without saving)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _yaml(values: dict) -> str:
    import yaml
    return yaml.safe_dump(values, sort_keys=False)
