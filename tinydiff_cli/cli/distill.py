"""`tinydiff distill`: start or resume a distillation of a checkpoint down to a few sampling steps, and report."""
from __future__ import annotations

import dataclasses
from pathlib import Path


from ..io.checkpoint import load_checkpoint
from ..runtime.device import describe, pick_device
from ..training.distill import Distiller, DistillSettings, plan_stages, settings_of
from ..errors import TinydiffError
from .ui import RichReporter, console, format_seconds, print_key_values
from ..io.runlock import run_lock
from .common import open_checkpoint, source_of
from .train import holds_a_run


def start_distiller(*, checkpoint: Path | None, settings: DistillSettings, out: Path | None, data_dir, device) -> Distiller:
    teacher = open_checkpoint(checkpoint)
    if teacher.distilled is not None or teacher.config.model.guidance_input:
        raise TinydiffError(f"{teacher.json_path} is already a distilled student; distil its teacher "
                            f"({teacher.distilled.teacher if teacher.distilled else 'the model it came from'}) instead")
    settings.validate()
    out = out or Path("runs") / f"{teacher.json_path.parent.name}-{settings.steps}step"
    if holds_a_run(out):
        raise TinydiffError(f"{out} already holds a run; continue that distillation with --resume, or pass --out DIR")
    return Distiller(teacher, settings, out, device, data_dir=data_dir, reporter=RichReporter())


def resume_distiller(*, resume: str, out: Path | None, max_minutes: float | None, device) -> Distiller:
    path = Path(resume) if resume != "last" else out
    if path is None:
        raise TinydiffError("--resume alone continues the distillation in --out; give --out DIR or --resume DIR")
    if not (path.is_file() or (path / "last.json").exists()):
        raise TinydiffError(f"nothing to resume at {path}: no distillation checkpoint there")
    ckpt = load_checkpoint(path)
    if "distill" not in ckpt.meta:
        raise TinydiffError(f"{ckpt.json_path} is not a distillation in progress (no 'distill' entry); "
                            f"resume training runs with `tinydiff train --resume`")
    if ckpt.meta["distill"].get("complete"):
        raise TinydiffError(f"{ckpt.json_path} is a finished distillation; sample it, or distil again with a new --out")
    if not ckpt.meta["distill"].get("resumable"):
        raise TinydiffError(f"{ckpt.json_path} is one stage's finished model, not a resumable state; resume with the "
                            f"folder's last.json ({ckpt.json_path.parent})")
    settings = settings_of(ckpt)
    if max_minutes is not None:  # 0: no time limit
        settings = dataclasses.replace(settings, max_minutes=max_minutes or None)
    distiller = Distiller(load_checkpoint(ckpt.distilled.teacher), settings, ckpt.json_path.parent, device,
                          data_dir=ckpt.meta["distill"].get("data_dir"), reporter=RichReporter())
    distiller.load_state(ckpt)
    return distiller


def run_distill(*, checkpoint: Path | None, settings: DistillSettings, out: Path | None, data_dir, device: str,
                resume: str | None) -> int:
    dev = pick_device(device)
    if resume is None:
        distiller = start_distiller(checkpoint=checkpoint, settings=settings, out=out, data_dir=data_dir, device=dev)
    else:
        distiller = resume_distiller(resume=resume, out=out, max_minutes=settings.max_minutes, device=dev)
    s = distiller.settings
    stages = ", ".join(f"{i + 1}: {st.describe()}" for i, st in enumerate(plan_stages(s)))
    budget = f"{s.max_minutes:g} min in all" if s.max_minutes else "no time limit"
    console.print(f"distilling {source_of(distiller.teacher_checkpoint)} into {distiller.out_dir} on "
                  f"{describe(dev)}; w in [{s.w_min:g}, {s.w_max:g}]; {budget}, at most {s.stage_iterations} "
                  f"iterations per stage of batch {s.batch_size}")
    console.print(f"stages {stages}")
    if distiller.stage_index:
        console.print(f"resuming at stage {distiller.stage_index + 1}, iteration {distiller.stage_step}")
    with run_lock(distiller.out_dir, "distill"):
        result = distiller.run()
    print_key_values("distillation " + ("interrupted" if result.stop_reason == "interrupted" else "finished"),
                     [("stages done", f"{result.stage}/{len(distiller.stages)}"),
                      ("last loss", "n/a" if result.loss is None else f"{result.loss:.5f}"),
                      ("elapsed", format_seconds(result.elapsed_s)), ("checkpoint", str(result.checkpoint)),
                      ("samples", str(distiller.out_dir / "samples"))])
    if result.stop_reason == "interrupted":
        console.print(f"continue with: tinydiff distill --resume {distiller.out_dir}")
        return 130
    console.print(f"sample it with: tinydiff sample --checkpoint {distiller.out_dir} "
                  f"(DDIM, {s.steps} step{'s' if s.steps > 1 else ''}, w in [{s.w_min:g}, {s.w_max:g}])")
    return 0
