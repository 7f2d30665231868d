"""A training run: data in memory, AdamW with warm-up and cosine LR, gradient clipping, EMA, the Min-SNR loss,
per-epoch eval loss and sample grid, atomic checkpoints that resume exactly where they stopped.

    trainer = Trainer(load_config("unet-small"), out_dir="runs/unet-small", device=pick_device())
    result = trainer.run()

A step's objective is the diffusion loss of its batch (`Trainer.loss`); the loop that optimises it, shared with
distill, is loop.py, and `Trainer.run` adds what a training run does between steps (loss.csv, checkpoints, evals,
previews). The checkpoint format is in io/checkpoint.py, the CSV and progress output in log.py, the evals in
evals.py.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..io.atomic import StorageError, write_text_atomic
from ..io.checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from ..config import Config, used_settings, validate
from ..models.config import adapt_to_image_size
from ..runtime.distributed import Dist, first_on_each_machine, is_collective_failure, reseed_other_ranks
from ..data.load import load_dataset
from ..data.datasets import to_model_range
from .ema import EMA
from ..errors import TinydiffError
from ..io.images import save_loss_plot
from .loop import Budget, Diverged, Loop, LoopPlan, LRSchedule, stop_on_signals
from ..diffusion.loss import diffusion_loss, draw_noise
from ..models import build_model, check_model_size
from ..sampling.pipeline import Pipeline, make_generator
from ..runtime.precision import grad_scaler, prepare, resolve_precision
from .evals import SampleQuality, eval_loss, save_sample_grid
from .log import NullLog, PrintReporter, QuietReporter, TrainLog


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


def lr_schedule(cfg: Config) -> LRSchedule:
    t = cfg.train
    return LRSchedule(t.lr, t.warmup_steps, cosine=t.lr_schedule == "cosine")


class Trainer:
    """Holds a run's data (in memory, on the device), model, EMA copy, optimizer, RNG stream and its `loop`;
    `loss(step)` is what the loop minimises, `run` the whole run."""

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
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema_pipeline = Pipeline.from_model(self.ema.ema_model, cfg, self.data)  # previews and evals
        self.formulation = self.ema_pipeline.formulation
        self.generator = make_generator(cfg.train.seed, self.device)  # timesteps, noise, label dropout
        self.state = TrainState(self.model, self.ema.ema_model, self.optimizer, self.generator)
        self.last_eval_loss: float | None = None
        self._permutation: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its data order)
        t = cfg.train
        budget = Budget(self.total_steps, 60 * t.max_minutes if t.max_minutes else None,
                        steps_used=f"reached step {self.total_steps} (epochs={t.epochs}, max_steps={t.max_steps})",
                        time_used=f"time budget of {t.max_minutes:g} min used" if t.max_minutes else "")
        plan = LoopPlan(lr_schedule(cfg), budget, t.batch_size, grad_clip=t.grad_clip, log_every=t.log_every)
        self.loop = Loop(self.model, self.loss, self.optimizer, self.ema, plan, reporter=self.reporter, dist=dist,
                         scaler=grad_scaler(self.precision, self.device))  # the scaler: fp16 only

    # ---- what the loop holds -----------------------------------------------------------------------------
    @property
    def reporter(self):
        return self._reporter

    @reporter.setter
    def reporter(self, reporter) -> None:  # one progress display for the run and its loop
        self._reporter = reporter
        if "loop" in self.__dict__:
            self.loop.reporter = reporter

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def scaler(self):
        return self.loop.scaler

    @property
    def stop_requested(self) -> bool:
        return self.loop.stop_requested

    def request_stop(self) -> None:
        """Stop after the current step and save `last` (what Ctrl-C does)."""
        self.loop.request_stop()

    def train_step(self, lr: float) -> torch.Tensor:
        """One optimizer step on the next batch (see Loop.train_step)."""
        return self.loop.train_step(lr)

    # ---- sizes and budgets -------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_split) // self.cfg.train.batch_size)

    @property
    def total_steps(self) -> int:
        t = self.cfg.train
        total = t.epochs * self.steps_per_epoch
        return min(total, t.max_steps) if t.max_steps else total

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save(self, name: str, elapsed_s: float) -> Path:
        """Write checkpoint `name` (atomically); never one with a NaN or infinite weight."""
        tensors = self.state.tensors()
        if not all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point()):
            raise Diverged(self.step, "the weights are no longer finite (not saved)", self.cfg.train.lr)
        extra = {"epoch": self.step // self.steps_per_epoch, "elapsed_s": elapsed_s, "tinydiff_version": __version__,
                 "optimizer": self.state.optimizer_settings(), "lr_decay_start": self.loop.lr_decay_start,
                 "train_loss": self.loop.last_loss, "eval_loss": self.last_eval_loss, "data": self.data.to_meta(),
                 "world_size": self.dist.world_size,
                 "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}
        return save_checkpoint(self.out_dir, name, config=self.cfg, step=self.step, tensors=tensors, extra=extra)

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from a training checkpoint: its state (see TrainState), step, elapsed time and last losses."""
        self.state.restore(ckpt)
        reseed_other_ranks(self.dist, self.cfg.train.seed, step=ckpt.step)  # the checkpoint holds rank 0's stream
        if self.scaler is not None and ckpt.meta.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt.meta["grad_scaler"])
        loop, warmup = self.loop, self.cfg.train.warmup_steps
        loop.step, loop.elapsed_before = ckpt.step, float(ckpt.meta.get("elapsed_s", 0.0))
        # checkpoints before 0.4 do not record where the decay began: by steps, it began at the end of warm-up
        loop.lr_decay_start = ckpt.meta.get("lr_decay_start",
                                            warmup / self.total_steps if ckpt.step > warmup else None)
        loop.last_loss, self.last_eval_loss = ckpt.meta.get("train_loss"), ckpt.meta.get("eval_loss")

    # ---- one step's objective -----------------------------------------------------------------------------
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

    def loss(self, step: int) -> torch.Tensor:
        """The diffusion loss of step `step`'s batch: what the loop minimises."""
        x0, labels = self.batch(step)
        # Label dropout, timesteps and noise are drawn for the whole global batch, in one order from one stream, and
        # each rank keeps its rows: so N ranks compute what one process computes with the same global batch.
        bs, rows, g = self.cfg.train.batch_size, self.dist.rows(self.cfg.train.batch_size), self.generator
        drop = (torch.rand(bs, device=self.device, generator=g) < self.cfg.diffusion.p_uncond)[rows]
        labels = torch.where(drop, torch.full_like(labels, self.data.num_classes), labels)  # label dropout: null class
        level, eps = draw_noise(self.formulation, (bs, *x0.shape[1:]), self.device, g)
        return diffusion_loss(self.net, self.formulation, x0, labels, min_snr_gamma=self.cfg.diffusion.min_snr_gamma,
                              noise=(level[rows], eps[rows]))

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

    # ---- the run ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        out, main, loop = self.out_dir, self.dist.is_main, self.loop  # rank 0 alone writes (see runtime/distributed.py)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "config.yaml", _yaml(used_settings(self.cfg)))
        start_step, self.saved = self.step, (None, 0.0)  # (step, elapsed_s) of the latest `last`
        quality = SampleQuality(self.cfg, self.device, self.reporter.log)
        self.reporter.start(self.total_steps, self.step)
        log = TrainLog(out / "loss.csv", resume_step=self.step) if main else NullLog()
        # the signal handlers outermost: a SIGTERM (torchrun sends one when another rank dies) cannot cut short the
        # message that explains a failure
        with stop_on_signals(loop), self.failures_explained(), log:
            stop_reason = loop.run(lambda _, metrics: self.between_steps(metrics, log, quality))
            # still under the signal handlers: a Ctrl-C now cannot cut the final save short. `last` comes first, so
            # a Ctrl-C during the preview after it (slow on a busy machine) loses nothing and exits at once.
            # what `last` records: the run's time, without the previews after its last step
            saved_step, saved_s = self.saved
            end_s = saved_s if self.step == saved_step else loop.elapsed()
            if main and self.step not in (saved_step, start_step):
                self.save("last", end_s)
                if stop_reason != "interrupted" and not self.stop_requested:  # a Ctrl-C means out, not a preview
                    with loop.skippable("final sample grid"):
                        save_sample_grid(self.ema_pipeline, out / "samples" / "final.png", self.cfg)
        if main and (out / "loss.csv").exists():
            save_loss_plot(out / "loss.csv", out / "loss.png")
        self.reporter.finish()
        if self.step == start_step:
            self.reporter.log(f"nothing to train: {stop_reason}")
        return TrainResult(self.step, stop_reason, out / "last.json", loop.last_loss, self.last_eval_loss,
                           loop.images_per_s, end_s, end_s - loop.elapsed_before, self.step / self.steps_per_epoch)

    def between_steps(self, metrics: dict | None, log: TrainLog | NullLog, quality: SampleQuality) -> None:
        """After each step: loss.csv every log_every steps; on rank 0, checkpoints, evals, and at the end of an
        epoch the eval loss, `last` and a sample grid. The other ranks wait for them in the next all-reduce."""
        t, out, loop = self.cfg.train, self.out_dir, self.loop
        epoch = self.step / self.steps_per_epoch
        row = {"step": self.step, "epoch": epoch, "lr": loop.last_lr, "images_per_s": loop.images_per_s}
        if metrics is not None:
            if self.dist.is_main and not out.is_dir():
                self.save("last", loop.elapsed())  # atomic_path makes the folder again
                raise TinydiffError(
                    f"the run folder {out} disappeared while training (deleted, or its disk unmounted); it was "
                    f"made again and `last` (step {self.step}) saved in it, but loss.csv and the earlier "
                    f"checkpoints are gone. Continue with: {self.dist.train_command} --resume {out}")
            log.write(**row, train_loss=metrics["loss"], elapsed_s=metrics["elapsed_s"])
        if not self.dist.is_main:
            return
        if self.step % t.checkpoint_every == 0:
            self.save(f"ckpt_{self.step:07d}", loop.elapsed())
        if t.eval_every and self.step % t.eval_every == 0 and not self.stop_requested:
            with loop.skippable("sample-quality eval"):
                score = quality(self.ema_pipeline)
                log.write(**row, elapsed_s=loop.elapsed(), score=score)
                self.reporter.log(f"step {self.step}: FID@{score.n} {score.fid:.2f} (real-data floor "
                                  f"{score.fid_real_floor:.2f}), class accuracy {score.class_accuracy:.1%}")
        if self.step % self.steps_per_epoch == 0:
            self.end_of_epoch(round(epoch), log, row)

    def end_of_epoch(self, epoch: int, log: TrainLog, row: dict) -> None:
        """The eval loss on the test split, `last`, the loss plot and (unless stopping) a sample grid."""
        self.last_eval_loss = eval_loss(self.ema_pipeline, self.test_split, n=self.cfg.train.eval_images,
                                        min_snr_gamma=self.cfg.diffusion.min_snr_gamma)
        log.write(**{**row, "epoch": epoch}, eval_loss=self.last_eval_loss, elapsed_s=self.loop.elapsed())
        self.saved, grid = (self.step, self.loop.elapsed()), None
        self.save("last", self.saved[1])
        save_loss_plot(self.out_dir / "loss.csv", self.out_dir / "loss.png")
        if not self.stop_requested:  # after a Ctrl-C, no preview
            with self.loop.skippable("sample grid"):
                grid = save_sample_grid(self.ema_pipeline, self.out_dir / "samples" / f"epoch_{epoch:03d}.png",
                                        self.cfg)
        self.reporter.log(epoch_summary(epoch, self.step, self.loop.last_loss, self.last_eval_loss, grid))


def epoch_summary(epoch: int, step: int, train_loss: float | None, eval_loss: float | None, grid: Path | None) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"epoch {epoch}: step {step}, train loss {fmt(train_loss)}, eval loss {fmt(eval_loss)}"
            + (f", samples {grid}" if grid else ""))


def _yaml(values: dict) -> str:
    import yaml
    return yaml.safe_dump(values, sort_keys=False)
