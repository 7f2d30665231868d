"""`tinydiff compare`: DDPM against other samplers at several step counts, side by side."""
from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from ..classifier import get_classifier
from ..compare import compare_samplers, speedup
from ..device import describe
from ..errors import TinydiffError
from ..evaluation import Scorer
from ..figures import image_table
from ..samplers import FULL_GRID_ONLY, SAMPLERS
from ..ui import console, err_console
from .common import SamplingOptions, check_output, load_pipeline, open_checkpoint, parse_digit, source_of


def parse_steps(text: str, T: int) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TinydiffError(f"--steps must be comma-separated integers like 10,50,100, got '{text}'") from None
    if not steps or any(not 1 <= s <= T for s in steps):
        raise TinydiffError(f"--steps must lie in 1..{T} (the model's T), got '{text}'")
    return steps


def parse_samplers(text: str) -> list[str]:
    """Registry names that take a number of steps (DDPM, over all T, is always the baseline)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    choices = [name for name in SAMPLERS if name not in FULL_GRID_ONLY]
    if not names or any(name not in choices for name in names):
        raise TinydiffError(f"--samplers must be comma-separated names from {', '.join(choices)} (DDPM over all T "
                            f"steps always runs as the baseline), got '{text}'")
    return names


def run_compare(*, checkpoint: Path | None, samplers: str, steps: str, n: int, digit: str, options: SamplingOptions,
                show: int, out: Path, evaluate: bool, data_dir, device: str, as_json: bool) -> None:
    """DDPM over all T steps, then each of `samplers` at each step count."""
    log = err_console if as_json else console
    ckpt = open_checkpoint(checkpoint)
    cfg, T = ckpt.config, ckpt.config.diffusion.timesteps
    plans = [("ddpm", None)] + [(name, count) for name in parse_samplers(samplers) for count in parse_steps(steps, T)]
    options.check(T)
    if n < 2 or show < 1:
        raise TinydiffError("--n must be at least 2 and --show at least 1")
    choice = parse_digit(digit, ckpt.data.num_classes)
    check_output(out)
    pipe = load_pipeline(ckpt, device)
    labels = pipe.labels(choice, n)
    scorer = None
    if evaluate:
        data_dir = data_dir or cfg.data.data_dir
        scorer = Scorer(get_classifier(cfg.data.dataset, data_dir, log=log.print), cfg.data.dataset, data_dir,
                        pipe.num_classes)
    w, eta, seed = options.w, options.eta, options.seed
    log.print(f"comparing samplers on {n} images from {source_of(ckpt)}, w={w:g}, {describe(pipe.device)}")
    runs = compare_samplers(pipe, labels, plans, scorer=scorer, on_start=lambda name: log.print(f"  sampling {name} ..."),
                            w=w, eta=eta, seed=seed, batch_size=options.batch_size)
    rows = min(show, n)
    image_table([(f"{r.name}\n{r.seconds_per_image * 1000:.0f} ms/img", r.images[:rows]) for r in runs], out,
                row_labels=[str(int(lbl)) if lbl < pipe.num_classes else "-" for lbl in labels[:rows]],
                title=f"same noise and labels, w={w:g}")
    results = [summary_row(r, runs[0]) for r in runs]
    if as_json:
        print(json.dumps({"n": n, "w": w, "eta": eta, "seed": seed, "checkpoint": str(ckpt.json_path),
                          "grid": str(out), "samplers": results}, indent=2))
        return
    console.print(results_table(results, n))
    console.print(f"grid -> {out}")


def summary_row(run, baseline) -> dict:
    summary = {"sampler": run.name, "model_steps": run.model_steps, "seconds": round(run.seconds, 3),
               "ms_per_image": round(run.seconds_per_image * 1000, 2), "speedup_vs_ddpm": round(speedup(run, baseline), 1)}
    if run.score is not None:
        summary.update(fid=round(run.score.fid, 3), fid_real_floor=round(run.score.fid_real_floor, 3),
                       class_accuracy=run.score.class_accuracy)
    return summary


def results_table(results: list[dict], n: int) -> Table:
    scored = "fid" in results[0]
    others = dict.fromkeys(r["sampler"].rsplit("-", 1)[0] for r in results[1:])
    table = Table(title=f"DDPM vs {', '.join(others)}, N = {n}" + (" (FID only comparable at equal N)" if scored else ""))
    for column in ["sampler", "wall time", "per image", "speed-up"] + (["FID", "class acc."] if scored else []):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for r in results:
        cells = [r["sampler"], f"{r['seconds']:.2f} s", f"{r['ms_per_image']:.1f} ms", f"{r['speedup_vs_ddpm']:.1f}x"]
        if scored:
            acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.1%}"
            cells += [f"{r['fid']:.2f}", acc]
        table.add_row(*cells)
    if scored:
        table.caption = f"real-data floor at N={n}: {results[0]['fid_real_floor']:.2f}"
    return table
