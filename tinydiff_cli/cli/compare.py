"""`tinydiff compare`: DDPM against every other sampler at several step counts, and distilled students, side by side:
time, network evaluations, FID and class accuracy, with the frontier plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from ..evaluation.classifier import get_classifier
from ..sampling.compare import Entry, compare_samplers, speedup
from ..data.load import load_dataset_of
from ..runtime.device import describe
from ..errors import TinydiffError
from ..evaluation.scorer import Scorer
from ..io.figures import frontier_chart, image_table
from ..config import DISCRETE_OBJECTIVES
from ..diffusion.sampling import FULL_GRID_ONLY, SAMPLERS
from .ui import console, err_console, where
from ..sampling.plan import SamplingRequest
from .common import (SamplingOptions, check_at_most_max_images, check_output, load_pipeline, open_checkpoint,
                     parse_digit, plan_for, source_of)


MAX_STEPS = 1000  # for a continuous formulation (edm, flow), which has no T


def parse_steps(text: str, T: int) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TinydiffError(f"--steps must be comma-separated integers like 10,50,100, got '{text}'") from None
    if not steps or any(not 1 <= s <= T for s in steps):
        raise TinydiffError(f"--steps must lie in 1..{T} (the model's T, or {MAX_STEPS} for a continuous one), got '{text}'")
    return steps


def parse_samplers(text: str | None) -> list[str]:
    """Registry names that take a number of steps, all of them when None (DDPM, over all T, is always the baseline)."""
    choices = [name for name in SAMPLERS if name not in FULL_GRID_ONLY]
    if text is None:
        return choices
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(name not in choices for name in names):
        raise TinydiffError(f"--samplers must be comma-separated names from {', '.join(choices)} (DDPM over all T "
                            f"steps always runs as the baseline), got '{text}'")
    return names


def run_compare(*, checkpoint: Path | None, samplers: str | None, steps: str, distilled: list[Path], n: int,
                digit: str, options: SamplingOptions, show: int, out: Path, plot: Path | None, evaluate: bool, data_dir,
                device: str, as_json: bool) -> None:
    """DDPM over all T steps, then each of `samplers` at each step count, then each distilled student."""
    log = err_console if as_json else console
    ckpt = open_checkpoint(checkpoint)
    cfg, discrete = ckpt.config, ckpt.config.diffusion.objective in DISCRETE_OBJECTIVES
    T = cfg.diffusion.timesteps if discrete else MAX_STEPS
    names, counts = parse_samplers(samplers), parse_steps(steps, T)
    if ckpt.distilled is not None:
        raise TinydiffError(f"{ckpt.json_path} is a distilled model; pass its teacher as --checkpoint "
                            f"({ckpt.distilled.teacher}) and the distilled model with --distilled")
    students = [open_checkpoint(path) for path in distilled]
    for student in students:
        if student.distilled is None:
            raise TinydiffError(f"--distilled {student.json_path} is not a distilled model (from `tinydiff distill`)")
        if student.data != ckpt.data:
            raise TinydiffError(f"--distilled {student.json_path} was trained on other data than {ckpt.json_path}")
    own = options.plan(ckpt)  # eta, w, the interval and the batch size, checked before anything is loaded
    w = options.w if options.w is not None else shared_w(own.w, students)
    # the baseline: DDPM over all T for a discrete schedule; else the first sampler at the first step count
    requests = ([{"sampler": "ddpm"}] if discrete else []) + [{"sampler": s, "steps": c} for s in names for c in counts]
    teacher_plans = [options.plan(ckpt, w=w, **r) for r in requests]
    student_plans = [plan_for(student, SamplingRequest(eta=options.eta, w=w)) for student in students]
    check_at_most_max_images(n)
    if n < 2 or show < 1:
        raise TinydiffError("--n must be at least 2 and --show at least 1")
    choice = parse_digit(digit, ckpt.data.class_names)
    check_output(out, plot)
    pipe = load_pipeline(ckpt, device)
    entries = ([Entry(pipe, plan) for plan in teacher_plans]
               + [Entry(load_pipeline(student, device), plan) for student, plan in zip(students, student_plans)])
    labels = pipe.labels(choice, n)
    scorer = None
    if evaluate and not ckpt.data.labelled:
        log.print(f"no FID or class accuracy: {ckpt.data.dataset} has no class subfolders, and the classifier they are "
                  f"measured with needs labels; comparing time only")
    elif evaluate:
        data = load_dataset_of(cfg.data, data_dir, trained_on=ckpt.data)
        scorer = Scorer(get_classifier(data, data_dir or cfg.data.data_dir, log=log.print), data)
    eta, seed = options.eta, options.seed
    log.print(f"comparing samplers on {n} images from {source_of(ckpt)}, {teacher_plans[0].guidance}, "
              f"{describe(pipe.device)}")
    runs = compare_samplers(entries, labels, seed=seed, batch_size=options.batch_size, scorer=scorer,
                            on_start=lambda name: log.print(f"  sampling {name} ..."))
    rows = min(show, n)
    image_table([(f"{r.name}\n{r.seconds_per_image * 1000:.0f} ms/img", r.images[:rows]) for r in runs], out,
                row_labels=[pipe.class_names[lbl] if lbl < pipe.num_classes else "-" for lbl in labels[:rows]],
                title=f"same noise and labels, w={w:g}")
    results = [summary_row(r, runs[0]) for r in runs]
    if scorer is not None and plot is not None:
        frontier_chart(results, plot, title=f"{ckpt.json_path.parent.name}: FID at N = {n}, w = {w:g}, "
                                             f"real-data floor {results[0]['fid_real_floor']:.2f}")
    if as_json:
        max_sigma = None if own.max_sigma == math.inf else own.max_sigma
        print(json.dumps({"n": n, "w": w, "w_max_sigma": max_sigma, "eta": eta, "seed": seed, "checkpoint": str(ckpt.json_path),
                          "grid": str(out), "plot": str(plot) if scorer and plot else None, "samplers": results},
                         indent=2))
        return
    console.print(results_table(results, n))
    console.print(f"grid -> {where(out)}" + (f"; FID against evaluations and time -> {where(plot)}" if scorer and plot else ""))


def shared_w(own: float, students) -> float:
    """The teacher's own w, moved into the range every student learned (when the ranges overlap)."""
    ranges = [(s.distilled.w_min, s.distilled.w_max) for s in students]
    if not ranges:
        return own
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return min(max(own, low), high) if low <= high else own


def summary_row(run, baseline) -> dict:
    summary = {"sampler": run.name, "family": run.family, "model_steps": run.model_steps,
               "network_evaluations": run.evaluations, "seconds": round(run.seconds, 3),
               "ms_per_image": round(run.seconds_per_image * 1000, 2), "speedup_vs_ddpm": round(speedup(run, baseline), 1)}
    if run.score is not None:
        summary.update(fid=round(run.score.fid, 3), fid_real_floor=round(run.score.fid_real_floor, 3),
                       class_accuracy=run.score.class_accuracy)
    return summary


def results_table(results: list[dict], n: int) -> Table:
    scored = "fid" in results[0]
    others = dict.fromkeys(r["family"] for r in results[1:])
    table = Table(title=f"DDPM vs {', '.join(others)}, N = {n}" + (" (FID only comparable at equal N)" if scored else ""))
    for column in ["sampler", "evals/image", "wall time", "per image", "speed-up"] + (["FID", "class acc."] if scored else []):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for r in results:
        cells = [r["sampler"], str(r["network_evaluations"]), f"{r['seconds']:.2f} s", f"{r['ms_per_image']:.1f} ms", f"{r['speedup_vs_ddpm']:.1f}x"]
        if scored:
            acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.1%}"
            cells += [f"{r['fid']:.2f}", acc]
        table.add_row(*cells)
    if scored:
        table.caption = f"real-data floor at N={n}: {results[0]['fid_real_floor']:.2f}"
    return table
