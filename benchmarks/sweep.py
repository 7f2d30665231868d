"""Short trainings under one wall-clock budget, each scored with `tinydiff eval`: a table and a plot.

    python benchmarks/sweep.py --budget-minutes 3 --set diffusion.objective=eps,v
    python benchmarks/sweep.py --budget-minutes 10 --set train.lr=1e-3,2e-3 --set train.batch_size=64,128 --n 2000

Every combination of the --set values (their cartesian product) is one run of the real `tinydiff train --max-minutes
B`, then `tinydiff eval --json` on its checkpoint, one after the other: two runs at once on a small machine slow
each other several times over, which would make the budget mean nothing. It writes, in --out:
  sweep.csv   one row per run: the settings, steps and whole epochs reached, FID, the real-data floor, class accuracy
  sweep.md    the same as a Markdown table
  sweep.png   FID (with the floor dashed) and class accuracy against the setting
  <run>/      each run's folder (checkpoints, loss.csv, grids), so any of them can be sampled or resumed
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path


def combinations(sets: list[str]) -> list[dict[str, str]]:
    """["a.b=1,2", "c.d=x"] -> [{"a.b": "1", "c.d": "x"}, {"a.b": "2", "c.d": "x"}]."""
    axes = []
    for item in sets:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--set takes KEY=V1,V2,..., got {item!r}")
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def run_name(setting: dict[str, str]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items()) or "preset"


def subprocess_cli(args: list[str]) -> str:
    """`tinydiff ARGS` in its own process; its stdout."""
    return subprocess.run([sys.executable, "-m", "tinydiff_cli", *args], check=True, capture_output=True,
                          text=True).stdout


def last_json_object(text: str) -> dict:
    """The JSON object that `eval --json` prints (whatever came before it)."""
    start = text.index("{")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def sweep(args, run_cli=subprocess_cli) -> list[dict]:
    out = Path(args.out)
    rows = []
    for setting in combinations(args.set or []):
        name = run_name(setting)
        run_dir = out / name
        train = ["train", "--preset", args.preset, "--out", str(run_dir), "--max-minutes", str(args.budget_minutes),
                 "--device", args.device, "--seed", str(args.seed)]
        train += ["--data-dir", args.data_dir] if args.data_dir else []
        for key, value in setting.items():
            train += ["--set", f"{key}={value}"]
        print(f"[{len(rows) + 1}] {name}: training {args.budget_minutes:g} min", flush=True)
        start = time.perf_counter()
        run_cli(train)
        meta = json.loads((run_dir / "last.json").read_text())
        score_args = ["eval", "--checkpoint", str(run_dir), "--n", str(args.n), "--w", str(args.w), "--json",
                      "--device", args.device]
        score_args += ["--sampler", args.sampler] if args.sampler else []
        score_args += ["--steps", str(args.steps)] if args.steps else []
        score = last_json_object(run_cli(score_args))
        rows.append({**setting, "run": name, "steps": meta["step"], "full_epochs": meta.get("epoch"),
                     "train_minutes": round((time.perf_counter() - start) / 60, 2), "fid": round(score["fid"], 3),
                     "fid_real_floor": round(score["fid_real_floor"], 3), "n": score["n"],
                     "class_accuracy": score["class_accuracy"]})
        print(f"    step {meta['step']}: FID {score['fid']:.2f} (floor {score['fid_real_floor']:.2f}), "
              f"accuracy {score['class_accuracy']:.1%}", flush=True)
    write_outputs(rows, out, title=f"{args.preset}, {args.budget_minutes:g} min each, eval N = {args.n}, w = {args.w:g}")
    return rows


def write_outputs(rows: list[dict], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"{title}\n", "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(row[k]) for k in fields) + " |" for row in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["run"] for row in rows]
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4), dpi=100)
    ax_fid.plot(names, [row["fid"] for row in rows], "o-", label="FID")
    ax_fid.plot(names, [row["fid_real_floor"] for row in rows], "k--", lw=1, label="real-data floor")
    ax_fid.set_ylabel(f"FID (classifier features, N = {rows[0]['n']})")
    ax_fid.legend()
    ax_acc.plot(names, [100 * (row["class_accuracy"] or 0) for row in rows], "o-", color="tab:green")
    ax_acc.set_ylabel("class accuracy (%)")
    for ax in (ax_fid, ax_acc):
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")
    plt.close(fig)
    print(f"table -> {out / 'sweep.md'}, {out / 'sweep.csv'}; plot -> {out / 'sweep.png'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unet-small")
    parser.add_argument("--budget-minutes", type=float, required=True, help="wall-clock training budget of each run")
    parser.add_argument("--set", action="append", help="KEY=V1,V2,... (repeatable; every combination is a run)")
    parser.add_argument("--n", type=int, default=2000, help="samples per eval (compare FID only at equal N)")
    parser.add_argument("--w", type=float, default=1.0)
    parser.add_argument("--sampler", default=None, help="eval's sampler [default: the engine's default]")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"sweeps/{time.strftime('%Y%m%d-%H%M%S')}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sweep(parse_args())
