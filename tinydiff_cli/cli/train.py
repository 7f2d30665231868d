"""`tinydiff train`: resolve the config (preset or checkpoint, then overrides), build a Trainer, report."""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path

import yaml

from ..io.checkpoint import load_checkpoint
from ..config import (Config, apply_overrides, apply_settings, available_presets, config_from_dict, config_to_dict,
                      read_preset, used_settings, validate)
from ..data.datasets import check_dataset, check_same_data, is_builtin
from ..runtime.device import describe
from ..runtime.distributed import Dist, close_distributed, init_distributed
from ..errors import TinydiffError
from ..runtime.precision import resolve_precision
from ..io.runlock import check_not_in_use, run_lock
from ..training.trainer import Trainer
from .ui import RichReporter, console, err_console, format_seconds, print_key_values


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in ("last.json", "loss.csv")) or any(run_dir.glob("ckpt_*.json"))


# What a run is: changing any of these on --resume would train another model on top of this one's weights.
IDENTITY = ("data.dataset", "data.image_size", "data.channels", "model", "diffusion.schedule", "diffusion.timesteps",
            "diffusion.objective")


def default_run_dir(cfg: Config) -> Path:
    """runs/<preset>, or runs/<preset>-on-<dataset> (a folder: its name) when the data is not the preset's own (MNIST
    for all but unet-small-fashion, and for a preset given as a file), so that runs on two datasets do not collide.
    "-on-" rather than "-": unet-small on fashion-mnist and unet-small-fashion on mnist would both be
    unet-small-fashion-mnist."""
    dataset = cfg.data.dataset if is_builtin(cfg.data.dataset) else Path(cfg.data.dataset).name
    own = "mnist"
    if cfg.preset in available_presets():
        own = read_preset(cfg.preset).get("data", {}).get("dataset", "mnist")
    return Path("runs") / (cfg.preset if dataset == own else f"{cfg.preset}-on-{dataset}")


def folder_to_resume(cfg: Config) -> Path:
    """default_run_dir, or the name such a run had before "-on-" (runs/<preset>-<dataset>) when only that one holds
    a checkpoint, so that a bare --resume still finds a run started by an older tinydiff."""
    run_dir = default_run_dir(cfg)
    older = run_dir.with_name(run_dir.name.replace("-on-", "-", 1))
    if run_dir != older and not (run_dir / "last.json").exists() and (older / "last.json").exists():
        return older
    return run_dir


def with_dataset_resolved(cfg: Config) -> Config:
    """A folder dataset as its absolute path (what the checkpoint records, so that `eval` finds it from anywhere);
    a TinydiffError for a name that is neither a built-in dataset nor a folder."""
    check_dataset(cfg.data.dataset)
    if is_builtin(cfg.data.dataset):
        return cfg
    return replace(cfg, data=replace(cfg.data, dataset=str(Path(cfg.data.dataset).expanduser().resolve())))


def identity_changes(before: Config, after: Config) -> list[str]:
    """'data.dataset: mnist -> fashion-mnist' for each setting of IDENTITY that differs."""
    old, new = config_to_dict(before), config_to_dict(after)
    changes = []
    for key in IDENTITY:
        section, _, name = key.partition(".")
        pairs = [(f"{section}.{k}", old[section].get(k), new[section].get(k)) for k in new[section]] if not name \
            else [(key, old[section].get(name), new[section].get(name))]
        changes += [f"{k}: {a} -> {b}" for k, a, b in pairs if a != b]
    return changes


def budget_on_resume(settings: dict, elapsed_s: float) -> dict:
    """How a resumed run is told to train longer: --max-minutes M means M more minutes (the budget counts the whole
    run, so it becomes the minutes used so far plus M); --max-steps or --epochs without --max-minutes sets a new end
    and lifts the old time budget, which would otherwise stop the run at once."""
    settings = dict(settings)
    if settings.get("train.max_minutes") is not None:
        settings["train.max_minutes"] = round(elapsed_s / 60 + settings["train.max_minutes"], 2)
    elif "train.max_steps" in settings or "train.epochs" in settings:
        settings["train.max_minutes"] = None
    return settings


def resolve_run(preset: str, overrides: list[str], settings: dict, out: Path | None, resume: str | None,
                is_main: bool = True):
    """-> (config, run folder, checkpoint to resume or None). Under torchrun only rank 0 checks the folder (the
    others could see what rank 0 has begun to write there)."""
    if resume is None:
        cfg = with_dataset_resolved(validate(config_from_dict(
            apply_settings(apply_overrides(read_preset(preset), overrides), settings))))
        run_dir = out or default_run_dir(cfg)
        if is_main:
            check_not_in_use(run_dir)
        if is_main and holds_a_run(run_dir):
            raise TinydiffError(f"{run_dir} already holds a run; continue it with --resume (same dataset and model), "
                                f"or pass --out DIR for a new one")
        return cfg, run_dir, None
    if resume == "last":
        resume_path = out or folder_to_resume(validate(config_from_dict(
            apply_settings(apply_overrides(read_preset(preset), overrides), settings))))
    else:
        resume_path = Path(resume)
    if not (resume_path.is_file() or (resume_path / "last.json").exists()):
        raise TinydiffError(f"nothing to resume at {resume_path}: no checkpoint there; start a new run without --resume, "
                            f"or give --resume the run folder or checkpoint to continue")
    ckpt = load_checkpoint(resume_path)
    if ckpt.distilled is not None:
        raise TinydiffError(f"{ckpt.json_path} is a distilled model; continue a distillation with "
                            f"`tinydiff distill --resume {ckpt.json_path.parent}`")
    if not ckpt.is_training_checkpoint:
        raise TinydiffError(f"{ckpt.json_path} is an exported model (EMA weights only); --resume needs a training "
                            f"checkpoint such as runs/<name>/last.json")
    cfg = with_dataset_resolved(validate(config_from_dict(apply_settings(
        apply_overrides(ckpt.meta["config"], overrides), budget_on_resume(settings, ckpt.meta.get("elapsed_s", 0.0))))))
    changes = identity_changes(ckpt.config, cfg)
    if changes:
        raise TinydiffError(f"--resume continues {ckpt.json_path} as it was trained, but this would change "
                            f"{'; '.join(changes)}; start a new run instead (leave out --resume, and give --out DIR)")
    return cfg, out or ckpt.json_path.parent, ckpt


def run_train(*, preset: str, overrides: list[str], settings: dict, out: Path | None, device: str, resume: str | None) -> int:
    dist, dev = init_distributed(device)  # a process group under torchrun; nothing otherwise
    console.quiet = err_console.quiet = not dist.is_main  # rank 0 alone prints (its errors too: all ranks share them)
    try:
        cfg, run_dir, ckpt = resolve_run(preset, overrides, settings, out, resume, is_main=dist.is_main)
        with run_lock(run_dir, "train") if dist.is_main else contextlib.nullcontext():
            return _train(cfg, run_dir, ckpt, dev, dist)
    finally:
        close_distributed(dist)


def _train(cfg: Config, run_dir: Path, ckpt, dev, dist: Dist) -> int:
    resolve_precision(cfg.train.precision, dev)  # a precision the device cannot run well is refused before anything
    reporter = RichReporter()
    trainer = Trainer(cfg, run_dir, dev, reporter, dist)  # loads the data first: a missing dataset is the first thing said
    parallel = f"; {dist.world_size} processes (DDP), global batch {cfg.train.batch_size}" if dist.enabled else ""
    compiled = ", compiled" if cfg.train.compile else ""
    console.print(f"[bold]device:[/] {describe(dev)}, {trainer.precision}{compiled}{parallel}")
    console.print("[bold]config:[/]")
    cfg = trainer.cfg  # with the backbone adapted to the data's image size
    console.print(yaml.safe_dump(used_settings(cfg), sort_keys=False).rstrip(), highlight=False)
    if ckpt is not None:
        check_same_data(trainer.data, ckpt.data)  # a folder may have changed since the run began
        trainer.load_state(ckpt)
        console.print(f"resuming from {ckpt.json_path} at step {trainer.step}")
        saved_by = int(ckpt.meta.get("world_size", 1))
        if saved_by != dist.world_size:
            console.print(f"it was trained by {saved_by} process{'es' if saved_by > 1 else ''}, now {dist.world_size}: "
                          f"the global batch ({cfg.train.batch_size}) and the data order carry on unchanged")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    console.print(f"model: {cfg.model.type}, {n_params / 1e6:.2f}M parameters; {len(trainer.train_split)} training images, "
                  f"{trainer.steps_per_epoch} steps per epoch; run folder {run_dir}")
    start_step = trainer.step
    result = trainer.run()
    _print_summary(result, run_dir, resumed=ckpt is not None)
    warning = starved_warning(result, start_step, trainer.steps_per_epoch, cfg, run_dir, dist.train_command)
    if warning:
        console.print(warning, style="yellow", highlight=False)
    if ckpt is not None and result.step == ckpt.step:
        console.print("to train longer, resume with --max-minutes M (M more minutes), --max-steps N or --epochs N "
                      "(a new end; the old time budget then no longer applies)")
    if result.stop_reason == "interrupted":
        console.print(f"interrupted at step {result.step}; continue with: {dist.train_command} --resume {result.checkpoint}")
        return 130
    return 0


def starved_warning(result, start_step: int, steps_per_epoch: int, cfg: Config, run_dir: Path,
                    command: str = "tinydiff train") -> str | None:
    """The warning for a run whose time budget ended before one epoch: the model has not yet seen each training
    image once, and its samples are mostly noise (a fresh-clone trial on a busy machine reached 0.3 epoch in 10
    minutes and 30% class accuracy). It gives the measured speed and the command that reaches one epoch at it."""
    if not result.stop_reason.startswith("time budget") or result.epoch >= 1 or result.step == start_step:
        return None
    images_per_s = (result.step - start_step) * cfg.train.batch_size / max(result.session_s, 1e-9)  # pauses included
    minutes = math.ceil((steps_per_epoch - result.step) * cfg.train.batch_size / images_per_s / 60)
    return (f"warning: undertrained. The time budget ended after {result.step} step{'s' if result.step > 1 else ''}, {result.epoch:.2f} of one epoch "
            f"(this preset plans {cfg.train.epochs}), at {images_per_s:.0f} images/s on average; expect samples that "
            f"are still mostly noise. A busy machine is the usual cause of a slow run. To reach one epoch at this "
            f"speed: {command} --resume {run_dir} --max-minutes {minutes}")


def _print_summary(result, run_dir: Path, resumed: bool) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    elapsed = format_seconds(result.elapsed_s)
    if resumed:
        elapsed = f"{format_seconds(result.session_s)} this session, {elapsed} over the whole run"
    history = [p for p in (run_dir / "loss.csv", run_dir / "loss.png") if p.exists()]
    rows = [("stopped because", result.stop_reason), ("step", f"{result.step} ({result.epoch:.2f} epochs)"),
            ("train loss (last window)", fmt(result.train_loss)), ("eval loss (test split, EMA)", fmt(result.eval_loss)),
            ("images/s (training)", f"{result.images_per_s:.0f}" if result.images_per_s else "n/a (no full logging window)"), ("elapsed", elapsed),
            ("checkpoint", str(result.checkpoint)),
            ("samples", str(run_dir / "samples") if (run_dir / "samples").is_dir() else "none yet (written after each epoch)"),
            ("loss history", ", ".join(map(str, history)) or "none")]
    print_key_values("training finished", rows)
