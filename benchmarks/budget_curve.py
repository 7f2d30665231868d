"""Quality against training time: score finished runs with `tinydiff eval` and draw FID and class accuracy against the
minutes each run trained.

    python benchmarks/budget_curve.py runs/a runs/b runs/c --n 5000
    python benchmarks/budget_curve.py runs/* --n 5000 --w 0.4 --w-max-sigma 5 --images-per-s 150

Each RUN is a run folder (or checkpoint) of `tinydiff train`, typically one preset trained to several step counts
(`tinydiff train --max-steps N --seed S`, or `sweep.py --train-steps 1900,4300,6000 --seeds 1,2`); every run is scored
at the same sampling settings, one eval after the other. A mid-run `ckpt_*` is a model part-way through a longer
learning-rate schedule, not a run trained to that step count: for the curve, give whole runs. The x axis is the
training time the run recorded itself (`elapsed_s` in its checkpoint, across resumes). A machine's speed drifts
between runs, so `--images-per-s R` puts every run at the images it saw divided by one throughput R instead (what
`train_throughput.py` or a run's own log gives), which compares step counts fairly. It writes, in --out:
  budget.csv  one row per run: the run, seed, steps, batch, images seen, recorded minutes, the minutes plotted, w,
              w_max_sigma, FID, the real-data floor, FID / floor, N, accuracy
  budget.md   the same as a Markdown table
  budget.png  FID (the floor dashed, --floor-multiple x the floor dotted) and accuracy against minutes, a line per
              training seed, each dot labelled with its step count
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from sweep import last_json_object, markdown_table, subprocess_cli


def run_facts(run: Path) -> dict:
    """Step, seed, batch and recorded training seconds of a run folder or checkpoint, from its JSON checkpoint."""
    if not run.exists():
        raise SystemExit(f"no such run folder or checkpoint: {run}")
    meta_path = run / "last.json" if run.is_dir() else run.with_suffix(".json")
    if not meta_path.is_file():
        raise SystemExit(f"{run} is not a tinydiff run folder or checkpoint (no {meta_path.name}); give the folder "
                         "that `tinydiff train` wrote")
    meta = json.loads(meta_path.read_text())
    train = meta["config"]["train"]
    return {"run": str(run), "seed": train["seed"], "steps": meta["step"], "batch": train["batch_size"],
            "images_seen": meta["step"] * train["batch_size"],  # train.batch_size is the global batch (distributed.py)
            "recorded_minutes": round(float(meta.get("elapsed_s", 0.0)) / 60, 2)}


def budget_curve(args, run_cli=subprocess_cli) -> list[dict]:
    """Score every run with `tinydiff eval` (through run_cli), write the table and the plot; the rows."""
    runs = [run_facts(Path(r)) for r in args.runs]  # every folder checked before the first eval
    rows = []
    for i, facts in enumerate(runs, 1):
        score_args = ["eval", "--checkpoint", facts["run"], "--n", str(args.n), "--json", "--device", args.device]
        score_args += ["--w", f"{args.w:g}"] if args.w is not None else []
        score_args += ["--w-max-sigma", f"{args.w_max_sigma:g}"] if args.w_max_sigma is not None else []
        score_args += ["--sampler", args.sampler] if args.sampler else []
        score_args += ["--steps", str(args.steps)] if args.steps else []
        score_args += ["--data-dir", args.data_dir] if args.data_dir else []
        print(f"[{i}/{len(runs)}] {facts['run']}: step {facts['steps']}, seed {facts['seed']}", flush=True)
        score = last_json_object(run_cli(score_args))
        minutes = (facts["images_seen"] / args.images_per_s / 60 if args.images_per_s
                   else facts["recorded_minutes"])
        fid, floor = round(score["fid"], 3), round(score["fid_real_floor"], 3)
        rows.append({**facts, "minutes": round(minutes, 2), "w": score["extra"]["w"],
                     "w_max_sigma": score["extra"].get("w_max_sigma"), "fid": fid, "fid_real_floor": floor,
                     "x_floor": round(fid / floor, 2), "n": score["n"], "class_accuracy": score["class_accuracy"]})
        print(f"    {minutes:.1f} min: FID {score['fid']:.2f} ({rows[-1]['x_floor']:.2f}x the floor "
              f"{score['fid_real_floor']:.2f}), accuracy {score['class_accuracy']:.1%}", flush=True)
    write_outputs(rows, Path(args.out), args)
    return rows


def write_outputs(rows: list[dict], out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "budget.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    x_words = (f"minutes at {args.images_per_s:g} images/s" if args.images_per_s
               else "training minutes (each run's own)")
    guidance = "each model's own w" if args.w is None else f"w = {args.w:g}"
    guidance += f", guided at sigma <= {args.w_max_sigma:g}" if args.w_max_sigma is not None else ""
    title = f"eval N = {rows[0]['n']}, {guidance}; x: {x_words}"
    (out / "budget.md").write_text("\n".join([title, "", *markdown_table(rows)]) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for i, seed in enumerate(dict.fromkeys(r["seed"] for r in rows)):
        points = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["minutes"])
        xs = [r["minutes"] for r in points]
        ax_fid.plot(xs, [r["fid"] for r in points], "o-", color=f"C{i}", label=f"seed {seed}")
        ax_acc.plot(xs, [100 * (r["class_accuracy"] or 0) for r in points], "o-", color=f"C{i}")
        for r in points:
            ax_fid.annotate(str(r["steps"]), (r["minutes"], r["fid"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    floor = sum(r["fid_real_floor"] for r in rows) / len(rows)  # one dataset and N: the same floor for every run
    ax_fid.axhline(floor, color="k", ls="--", lw=1, label="real-data floor")
    if args.floor_multiple:
        ax_fid.axhline(args.floor_multiple * floor, color="k", ls=":", lw=1,
                       label=f"{args.floor_multiple:g}x the floor")
    ax_fid.set_ylabel(f"FID (classifier features, N = {rows[0]['n']})")
    ax_fid.legend()
    ax_acc.set_ylabel("class accuracy (%)")
    for ax in (ax_fid, ax_acc):
        ax.set_xlabel(x_words)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "budget.png")
    plt.close(fig)
    print(f"table -> {out / 'budget.md'}, {out / 'budget.csv'}; plot -> {out / 'budget.png'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (or checkpoints) of `tinydiff train`")
    parser.add_argument("--n", type=int, default=2000, help="samples per eval (compare FID only at equal N)")
    parser.add_argument("--w", type=float, default=None, help="guidance weight [default: each model's own]")
    parser.add_argument("--w-max-sigma", type=float, default=None,
                        help="guide only the steps at noise level sigma <= S [default: each model's own]")
    parser.add_argument("--sampler", default=None, help="eval's sampler [default: the engine's default]")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--images-per-s", type=float, default=None,
                        help="plot every run at images seen / R instead of its recorded minutes")
    parser.add_argument("--floor-multiple", type=float, default=3.0, help="draw this multiple of the floor (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"budget/{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args(argv)
    if args.images_per_s is not None and not args.images_per_s > 0:
        parser.error(f"--images-per-s takes a positive throughput such as 150, got {args.images_per_s:g}")
    if args.w_max_sigma is not None and not args.w_max_sigma > 0:  # also refuses nan, before the first eval
        parser.error(f"--w-max-sigma takes a positive noise level such as 5 (inf: every step), "
                     f"got {args.w_max_sigma:g}")
    return args


if __name__ == "__main__":
    budget_curve(parse_args())
