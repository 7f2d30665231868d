"""The training loop: data in memory, AdamW + warm-up/cosine LR, gradient clipping, EMA, Min-SNR loss,
per-epoch eval loss and sample grid, atomic checkpoints that resume exactly where they stopped.

    trainer = Trainer(load_config("unet-small"), out_dir="runs/unet-small", device=pick_device())
    result = trainer.run()
"""
from __future__ import annotations

import csv
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .atomic import write_text_atomic
from .checkpoint import Checkpoint, save_checkpoint
from .config import Config, config_to_dict
from .data import CHANNELS, CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, load_split, to_model_range
from .ema import EMA
from .errors import TinydiffError
from .images import save_grid, save_loss_plot
from .models import build_model
from .objectives import diffusion_loss
from .sampling import labels_for, make_generator, sample_images
from .schedules import make_schedule

CSV_FIELDS = ["step", "epoch", "train_loss", "eval_loss", "lr", "images_per_s", "elapsed_s", "fid", "fid_n", "class_acc"]


class PrintReporter:
    """The engine's default progress output; the CLI passes a Rich one with the same methods."""

    def start(self, total_steps: int, step: int) -> None:
        print(f"training steps {step}..{total_steps}")

    def update(self, step: int, metrics: dict | None) -> None:
        """Called every step; `metrics` (loss, lr, images_per_s, eta_s) every train.log_every steps."""

    def log(self, message: str) -> None:
        print(message)

    def finish(self) -> None:
        pass


@dataclass
class TrainResult:
    step: int
    stop_reason: str
    checkpoint: Path
    train_loss: float | None
    eval_loss: float | None
    images_per_s: float
    elapsed_s: float


class LossWindow:
    """Sums the loss on the device and counts images between log points, so that the host waits for the
    device once per window instead of once per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.loss, self.steps, self.images, self.start = torch.zeros((), device=self.device), 0, 0, now

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.steps += 1
        self.images += images

    def pause(self, seconds: float) -> None:
        """Time spent on checkpoints, evals and previews is not training throughput."""
        self.start += seconds

    def close(self) -> tuple[float, float]:
        """(mean loss, images/s) of the window, and start the next one."""
        now = time.perf_counter()
        result = (self.loss / max(self.steps, 1)).item(), self.images / max(now - self.start, 1e-9)
        self.reset(now)
        return result


def lr_at(cfg: Config, step: int, progress: float) -> float:
    """Linear warm-up over train.warmup_steps, then cosine decay to 0 over progress in [0, 1] (or constant)."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if t.lr_schedule == "cosine" else 1.0
    return t.lr * warm * decay


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, device: torch.device, reporter=None):
        self.cfg, self.out_dir, self.device = cfg, Path(out_dir), torch.device(device)
        self.reporter = reporter or PrintReporter()
        torch.manual_seed(cfg.train.seed)
        self.train_split = load_split(cfg.data.dataset, cfg.data.data_dir, train=True).to(self.device)
        self.test_split = load_split(cfg.data.dataset, cfg.data.data_dir, train=False).to(self.device)
        self.model = build_model(cfg.model, IMAGE_SIZE, CHANNELS, NUM_CLASSES).to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps).to(self.device)
        self.generator = make_generator(cfg.train.seed, self.device)  # timesteps, noise, label dropout
        self.step, self.elapsed_before = 0, 0.0
        self.last_train_loss: float | None = None
        self.last_eval_loss: float | None = None
        self._stop_requested = False
        self.saved_at = -1  # the step whose `last` checkpoint is on disk
        self._permutation: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its data order)
        self.scorer = None  # built on the first sample-quality eval (trains the classifier once if needed)

    # ---- sizes and budgets -------------------------------------------------------------------------
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

    # ---- state ---------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.ema_model.state_dict().items()})
        for index, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in state.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.train"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def save(self, name: str, elapsed_s: float) -> Path:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.state_dict()["param_groups"]]
        extra = {"epoch": self.step // self.steps_per_epoch, "elapsed_s": elapsed_s, "tinydiff_version": __version__,
                 "optimizer": {"type": "AdamW", "param_groups": groups},
                 "train_loss": self.last_train_loss, "eval_loss": self.last_eval_loss,
                 "data": {"dataset": self.cfg.data.dataset, "image_size": IMAGE_SIZE, "channels": CHANNELS,
                          "num_classes": NUM_CLASSES, "class_names": CLASS_NAMES[self.cfg.data.dataset]}}
        return save_checkpoint(self.out_dir, name, config=self.cfg, step=self.step, tensors=self.state_tensors(), extra=extra)

    def load_state(self, ckpt: Checkpoint) -> None:
        """Restore weights, EMA, optimizer moments, RNG streams, step and elapsed time from a checkpoint."""
        try:
            self.model.load_state_dict(ckpt.tensors("model"))
            self.ema.ema_model.load_state_dict(ckpt.tensors("ema"))
        except RuntimeError as e:
            raise TinydiffError(f"{ckpt.tensors_path} does not fit the model in the config ({str(e).splitlines()[0]})") from None
        optim = ckpt.tensors("optim")
        state: dict[int, dict] = {}
        for key, value in optim.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value.to(self.device) if name != "step" else value
        # hyper-parameters come from the current config (so --set train.weight_decay=... applies on resume)
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        rng = ckpt.tensors("rng")
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["train"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = ckpt.step
        self.elapsed_before = float(ckpt.meta.get("elapsed_s", 0.0))
        self.last_train_loss, self.last_eval_loss = ckpt.meta.get("train_loss"), ckpt.meta.get("eval_loss")

    # ---- one step ------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """The epoch's permutation is a function of (seed, epoch), so a resumed run draws the same batches.
        It is built once per epoch and kept on the device."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._permutation[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(len(self.train_split), generator=g).to(self.device))
        bs = self.cfg.train.batch_size
        return self._permutation[1][within * bs:(within + 1) * bs]

    def train_step(self, lr: float) -> torch.Tensor:
        idx = self.batch_indices(self.step)
        x0 = to_model_range(self.train_split.images[idx])
        labels = self.train_split.labels[idx]
        drop = torch.rand(labels.shape, device=self.device, generator=self.generator) < self.cfg.diffusion.p_uncond
        labels = torch.where(drop, torch.full_like(labels, NUM_CLASSES), labels)  # the null class
        d = self.cfg.diffusion
        loss = diffusion_loss(self.model, self.schedule, x0, labels, objective=d.objective,
                              min_snr_gamma=d.min_snr_gamma, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return loss.detach()

    # ---- per-epoch work ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss of the EMA model on the first train.eval_images test images, with fixed t and noise
        so that epochs are comparable."""
        n = min(self.cfg.train.eval_images, len(self.test_split))
        if n == 0:
            return None
        g = make_generator(12345, self.device)
        d, total = self.cfg.diffusion, 0.0
        for start in range(0, n, 500):
            x0 = to_model_range(self.test_split.images[start:min(start + 500, n)])
            labels = self.test_split.labels[start:min(start + 500, n)]
            loss = diffusion_loss(self.ema.ema_model, self.schedule, x0, labels, objective=d.objective,
                                  min_snr_gamma=d.min_snr_gamma, generator=g)
            total += loss.item() * x0.shape[0]
        return total / n

    def save_sample_grid(self, name: str) -> Path | None:
        """A grid from the EMA model with one class per column, from the same noise every time."""
        t = self.cfg.train
        if t.sample_rows == 0:
            return None
        labels = labels_for("all", t.sample_rows * NUM_CLASSES, NUM_CLASSES)
        images = sample_images(self.ema.ema_model, self.schedule, self.cfg.diffusion.objective, labels,
                               ddim_steps=t.sample_steps, w=t.sample_w, seed=t.seed)
        return save_grid(images, self.out_dir / "samples" / f"{name}.png", ncols=NUM_CLASSES)

    def sample_quality(self):
        """FID and class accuracy of train.eval_samples EMA samples (DDIM train.sample_steps, w = train.sample_w)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return self._sample_quality()  # building or training the classifier must not shift dropout's RNG

    def _sample_quality(self):
        from .classifier import get_classifier
        from .data import to_uint8
        from .evaluation import Scorer

        t, data = self.cfg.train, self.cfg.data
        if self.scorer is None:
            classifier = get_classifier(data.dataset, data.data_dir, self.device, log=self.reporter.log)
            self.scorer = Scorer(classifier, data.dataset, data.data_dir, NUM_CLASSES)
        labels = labels_for("all", t.eval_samples, NUM_CLASSES)
        images = sample_images(self.ema.ema_model, self.schedule, self.cfg.diffusion.objective, labels,
                               ddim_steps=t.sample_steps, w=t.sample_w, seed=t.seed + 1)
        return self.scorer.score(to_uint8(images), labels)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out_dir / "config.yaml", _yaml(config_to_dict(self.cfg)))
        log = _open_log(self.out_dir / "loss.csv", self.step)
        restore = self._install_signal_handlers()
        try:
            return self._loop(log)
        finally:
            log.close()
            restore()

    def _loop(self, log) -> TrainResult:
        t, start_step, session_start = self.cfg.train, self.step, time.perf_counter()

        def elapsed():
            return self.elapsed_before + time.perf_counter() - session_start

        self.reporter.start(self.total_steps, self.step)
        window, images_per_s = LossWindow(self.device), 0.0
        while not (stop_reason := self._stop_reason(elapsed())):
            lr = lr_at(self.cfg, self.step, self.progress(elapsed()))
            window.add(self.train_step(lr), t.batch_size)
            metrics = None
            if self.step % t.log_every == 0:
                self.last_train_loss, images_per_s = window.close()
                _write_row(log, self.step, self.step / self.steps_per_epoch, self.last_train_loss, None, lr, images_per_s, elapsed())
                metrics = {"loss": self.last_train_loss, "lr": lr, "images_per_s": images_per_s,
                           "eta_s": self._eta(images_per_s, elapsed())}
            self.reporter.update(self.step, metrics)
            window.pause(self._periodic_work(log, lr, images_per_s, elapsed))
        if self.saved_at != self.step and self.step != start_step:
            if stop_reason != "interrupted":  # a user who pressed Ctrl-C wants out, not a preview
                self.save_sample_grid("final")
            self.save("last", elapsed())
        save_loss_plot(self.out_dir / "loss.csv", self.out_dir / "loss.png")
        self.reporter.finish()
        if self.step == start_step:
            self.reporter.log(f"nothing to train: {stop_reason}")
        return TrainResult(self.step, stop_reason, self.out_dir / "last.json", self.last_train_loss, self.last_eval_loss,
                           images_per_s, elapsed())

    def _periodic_work(self, log, lr: float, images_per_s: float, elapsed) -> float:
        """Checkpoints, sample-quality evals and end-of-epoch work due at this step; returns the seconds spent,
        which do not count as training throughput."""
        t, start = self.cfg.train, time.perf_counter()
        if self.step % t.checkpoint_every == 0:
            self.save(f"ckpt_{self.step:07d}", elapsed())
        if t.eval_every and self.step % t.eval_every == 0:
            score = self.sample_quality()
            _write_row(log, self.step, self.step / self.steps_per_epoch, None, None, lr, images_per_s, elapsed(), score)
            self.reporter.log(f"step {self.step}: FID@{score.n} {score.fid:.2f} (real-data floor {score.fid_real_floor:.2f}), "
                              f"class accuracy {score.class_accuracy:.1%}")
        if self.step % self.steps_per_epoch == 0:
            self._end_of_epoch(log, lr, images_per_s, elapsed())
            self.saved_at = self.step
        return time.perf_counter() - start

    def _stop_reason(self, elapsed_s: float) -> str:
        t = self.cfg.train
        if self._stop_requested:
            return "interrupted"
        if self.step >= self.total_steps:
            return f"reached step {self.total_steps} (epochs={t.epochs}, max_steps={t.max_steps})"
        if t.max_minutes and elapsed_s >= 60 * t.max_minutes:
            return f"time budget of {t.max_minutes:g} min used"
        return ""

    def _eta(self, images_per_s: float, elapsed_s: float) -> float:
        steps_left = self.total_steps - self.step
        eta = steps_left * self.cfg.train.batch_size / max(images_per_s, 1e-9)
        if self.cfg.train.max_minutes:
            eta = min(eta, max(0.0, 60 * self.cfg.train.max_minutes - elapsed_s))
        return eta

    def _end_of_epoch(self, log, lr: float, images_per_s: float, elapsed_s: float) -> None:
        epoch = self.step // self.steps_per_epoch
        self.last_eval_loss = self.evaluate()
        _write_row(log, self.step, epoch, None, self.last_eval_loss, lr, images_per_s, elapsed_s)
        grid = self.save_sample_grid(f"epoch_{epoch:03d}")
        self.save("last", elapsed_s)
        save_loss_plot(self.out_dir / "loss.csv", self.out_dir / "loss.png")
        eval_text = f"{self.last_eval_loss:.4f}" if self.last_eval_loss is not None else "n/a"
        self.reporter.log(f"epoch {epoch}: step {self.step}, train loss {self.last_train_loss:.4f}, eval loss {eval_text}"
                          + (f", samples {grid}" if grid else ""))

    def request_stop(self) -> None:
        """Stop after the current step and save `last` (what Ctrl-C does)."""
        self._stop_requested = True

    def _install_signal_handlers(self):
        """First Ctrl-C (or SIGTERM) stops after the current step and saves; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self.request_stop()
            self.reporter.log("stopping after this step and saving (press Ctrl-C again to abort without saving)")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]


def _yaml(values: dict) -> str:
    import yaml
    return yaml.safe_dump(values, sort_keys=False)


def _open_log(path: Path, resume_step: int):
    """Open loss.csv for appending, first dropping rows written after the checkpoint being resumed."""
    rows = []
    if path.exists() and resume_step > 0:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    f = open(path, "w", newline="", buffering=1)
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return f


def _write_row(f, step, epoch, train_loss, eval_loss, lr, images_per_s, elapsed_s, score=None) -> None:
    """One row of loss.csv; `score` (sample quality, see evaluation.Score) fills fid, fid_n and class_acc."""
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    quality = ["", "", ""] if score is None else [fmt(score.fid, ".4f"), score.n, fmt(score.class_accuracy, ".4f")]
    csv.writer(f).writerow([step, fmt(epoch, ".3f"), fmt(train_loss, ".6f"), fmt(eval_loss, ".6f"), fmt(lr, ".3e"),
                            fmt(images_per_s, ".1f"), fmt(elapsed_s, ".1f"), *quality])
