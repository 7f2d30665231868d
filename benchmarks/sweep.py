"""Short trainings under one budget (minutes or steps), each scored with `tinydiff eval`: a table and a plot.

    python benchmarks/sweep.py --budget-minutes 3 --set diffusion.objective=eps,v
    python benchmarks/sweep.py --budget-minutes 10 --set train.lr=1e-3,2e-3 --set train.batch_size=32,64 --n 2000
    python benchmarks/sweep.py --train-steps 1100 --seeds 1,2 --set diffusion.objective=eps,v --n 2000
    python benchmarks/sweep.py --train-steps 1100,2200,4400 --seeds 1 --w 0.25,0.5,1 --n 2000   # quality vs budget
    python benchmarks/sweep.py --train-steps 4300 --w 0.5 --w-max-sigma 5 --n 5000   # guided at sigma_t <= 5 only

Every combination of the --set values (their cartesian product), once per seed of --seeds, is one run of the real
`tinydiff train --max-minutes B` (or `--max-steps N`), then `tinydiff eval --json` on its checkpoint, one after the
other: two runs at once on a small machine slow each other several times over, which would make a minutes budget
mean nothing. A machine's speed also drifts between runs (10-minute runs of one preset here reached 968 to 1,155
steps), so --train-steps gives every run the same training, and --seeds shows the spread between seeds. Several
guidance weights (--w 0.5,1) score every trained model at each w: sampling is cheap next to training, and the best w
moves with the training (on unet-small at batch 64 with DPM++2M-10, w = 0.75 wins at 1,100 steps and 0.25 at
2,200), so settings are best compared each at its own best w. Several step counts (--train-steps 1100,2200) are one
more setting, train.max_steps: each is a whole run whose learning rate decays over its own length. It writes, in --out:
  sweep.csv   one row per run and w: the settings, seed, steps and whole epochs reached, w, FID, the real-data floor,
              accuracy
  sweep.md    the same as a Markdown table; with several seeds, each setting's mean and spread; with several w, each
              setting's best w (the lowest mean FID)
  sweep.png   FID (with the floor dashed) and class accuracy against the setting, one line per w (against w when only
              w varies): a dot per run, a line through the means over seeds
  <run>/      each run's folder (checkpoints, loss.csv, grids), so any of them can be sampled or resumed
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
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


def budget_words(args) -> str:
    parts = [f"{args.train_steps.replace(',', '/')} steps" if args.train_steps else "",
             f"{args.budget_minutes:g} min" if args.budget_minutes else ""]
    return " or ".join(p for p in parts if p)


def sweep(args, run_cli=subprocess_cli) -> list[dict]:
    out = Path(args.out)
    rows = []
    seeds = [int(s) for s in str(args.seeds).split(",")]
    weights = guidance_weights(args.w) if args.w is not None else [None]  # None: each model's own train.sample_w
    budgets = step_budgets(args.train_steps)
    # several step counts: one more axis of settings (a whole run each, its LR decaying over its own length)
    axes = ([f"train.max_steps={','.join(map(str, budgets))}"] if len(budgets) > 1 else []) + (args.set or [])
    for setting in combinations(axes):
        for seed in seeds:
            name = run_name(setting) + (f",seed={seed}" if len(seeds) > 1 else "")
            run_dir = out / name
            train = ["train", "--preset", args.preset, "--out", str(run_dir), "--device", args.device,
                     "--seed", str(seed)]
            train += ["--max-minutes", str(args.budget_minutes)] if args.budget_minutes else []
            train += ["--max-steps", str(budgets[0])] if len(budgets) == 1 else []
            train += ["--dataset", args.dataset] if args.dataset else []
            train += ["--data-dir", args.data_dir] if args.data_dir else []
            for key, value in setting.items():
                train += ["--set", f"{key}={value}"]
            print(f"[{len(rows) + 1}] {name}: training {budget_words(args)}", flush=True)
            start = time.perf_counter()
            run_cli(train)
            train_minutes = (time.perf_counter() - start) / 60
            meta = json.loads((run_dir / "last.json").read_text())
            for w in weights:
                score_args = ["eval", "--checkpoint", str(run_dir), "--n", str(args.n), "--json", "--device", args.device]
                score_args += ["--w", f"{w:g}"] if w is not None else []
                score_args += ["--w-max-sigma", f"{args.w_max_sigma:g}"] if args.w_max_sigma is not None else []
                score_args += ["--sampler", args.sampler] if args.sampler else []
                score_args += ["--steps", str(args.steps)] if args.steps else []
                score = last_json_object(run_cli(score_args))
                w = score["extra"]["w"]  # what eval used: the model's own weight when --w was not given
                rows.append({**setting, "seed": seed, "run": name, "steps": meta["step"],
                             "full_epochs": meta.get("epoch"), "train_minutes": round(train_minutes, 2), "w": w,
                             "fid": round(score["fid"], 3), "fid_real_floor": round(score["fid_real_floor"], 3),
                             "n": score["n"], "class_accuracy": score["class_accuracy"]})
                print(f"    step {meta['step']}, w {w:g}: FID {score['fid']:.2f} (floor {score['fid_real_floor']:.2f}), "
                      f"accuracy {score['class_accuracy']:.1%}", flush=True)
    data = f", {args.dataset}" if args.dataset else ""
    w_words = ", ".join(f"{w:g}" for w in weights) if args.w is not None else "each model's own"
    w_words += f", guided at sigma <= {args.w_max_sigma:g}" if args.w_max_sigma is not None else ""
    write_outputs(rows, out, title=f"{args.preset}{data}, {budget_words(args)} each, eval N = {args.n}, w = {w_words}",
                  keys=[key for key in rows[0] if key not in RESULT_FIELDS])
    return rows


RESULT_FIELDS = ("seed", "run", "steps", "full_epochs", "train_minutes", "w", "fid", "fid_real_floor", "n",
                 "class_accuracy")


def comma_values(text, convert, flag: str, example: str, lowest: float) -> list:
    """"1,2" -> [convert("1"), convert("2")], each >= lowest and distinct; else one line naming the flag."""
    try:
        values = [convert(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or any(v < lowest for v in values) or len(set(values)) != len(values):
        raise SystemExit(f"{flag} takes distinct values >= {lowest:g} such as {example}, got {text!r}")
    return values


def step_budgets(text) -> list[int]:
    """"1100,2200" -> [1100, 2200]; None (no step budget) -> []."""
    return [] if text is None else comma_values(text, int, "--train-steps", "1100 or 1100,2200", 1)


def guidance_weights(text) -> list[float]:
    """"0.5,1" -> [0.5, 1.0]: the guidance weights every trained model is scored at."""
    return comma_values(text, float, "--w", "1 or 0.5,1", 0)


def means_over_seeds(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per setting and w: the mean and the spread (max - min) of FID and accuracy over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((tuple(row[k] for k in keys), row.get("w")), []).append(row)
    summary = []
    for (setting, w), group in groups.items():
        fids = [r["fid"] for r in group]
        accs = [r["class_accuracy"] or 0.0 for r in group]
        summary.append({**dict(zip(keys, setting)), "setting": run_name(dict(zip(keys, setting))), "w": w,
                        "seeds": len(group), "mean_steps": round(statistics.mean(r["steps"] for r in group)),
                        "mean_fid": round(statistics.mean(fids), 3), "fid_spread": round(max(fids) - min(fids), 3),
                        "fid_real_floor": round(statistics.mean(r["fid_real_floor"] for r in group), 3),
                        "mean_class_accuracy": round(statistics.mean(accs), 4)})
    return summary


def best_guidance(summary: list[dict]) -> list[dict]:
    """Each setting's row of `means_over_seeds` with the lowest mean FID over the guidance weights it was scored at."""
    best: dict[str, dict] = {}
    for row in summary:
        if row["setting"] not in best or row["mean_fid"] < best[row["setting"]]["mean_fid"]:
            best[row["setting"]] = row
    return list(best.values())


def markdown_table(rows: list[dict]) -> list[str]:
    fields = list(rows[0])
    return (["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
            + ["| " + " | ".join(str(row[k]) for k in fields) + " |" for row in rows])


def write_outputs(rows: list[dict], out: Path, title: str, keys: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = means_over_seeds(rows, keys)
    weights = list(dict.fromkeys(s["w"] for s in summary))
    lines = [f"{title}\n", *markdown_table(rows)]
    if any(s["seeds"] > 1 for s in summary):
        lines += ["", "Mean over seeds (spread = max - min):", "", *markdown_table(summary)]
    if len(weights) > 1:
        lines += ["", "Each setting at its best guidance weight (lowest mean FID):", "",
                  *markdown_table(best_guidance(summary))]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # x: one position per setting (per w when only w varies); each seed's run is a dot, a line joins the means over
    # seeds, one line per w.
    names = list(dict.fromkeys(s["setting"] for s in summary))
    against_w = len(names) == 1 and len(weights) > 1
    if against_w:
        weights = sorted(weights)
        lines_of = {names[0]: sorted(summary, key=lambda s: s["w"])}
        x_of = {w: w for w in weights}
        ticks, labels = weights, [f"{w:g}" for w in weights]
    else:
        lines_of = {w: [s for s in summary if s["w"] == w] for w in weights}
        x_of = {name: i for i, name in enumerate(names)}
        ticks, labels = list(range(len(names))), names
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 4), 4), dpi=100)
    for i, (line, points) in enumerate(lines_of.items()):
        color = f"C{i}"
        label = "FID" if against_w or len(weights) == 1 else f"FID, w = {line}"
        xs = [x_of[s["w"] if against_w else s["setting"]] for s in points]
        runs = [r for r in rows if against_w or r.get("w") == line]
        run_xs = [x_of[r["w"] if against_w else run_name({k: r[k] for k in keys})] for r in runs]
        ax_fid.plot(run_xs, [r["fid"] for r in runs], "o", color=color, alpha=0.5)
        ax_fid.plot(xs, [s["mean_fid"] for s in points], "-", color=color, label=label)
        ax_acc.plot(run_xs, [100 * (r["class_accuracy"] or 0) for r in runs], "o", color=color, alpha=0.5)
        ax_acc.plot(xs, [100 * s["mean_class_accuracy"] for s in points], "-", color=color)
    floor = statistics.mean(s["fid_real_floor"] for s in summary)
    ax_fid.axhline(floor, color="k", ls="--", lw=1, label="real-data floor")
    ax_fid.set_ylabel(f"FID (classifier features, N = {rows[0]['n']})")
    ax_fid.legend()
    ax_acc.set_ylabel("class accuracy (%)")
    for ax in (ax_fid, ax_acc):
        ax.set_xticks(ticks, labels)
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", rotation=30)
        if against_w:
            ax.set_xlabel("guidance weight w")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")
    plt.close(fig)
    print(f"table -> {out / 'sweep.md'}, {out / 'sweep.csv'}; plot -> {out / 'sweep.png'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unet-small")
    parser.add_argument("--budget-minutes", type=float, help="wall-clock training budget of each run")
    parser.add_argument("--train-steps", help="optimizer steps of each run: the same training for every run however "
                        "fast the machine is at the moment (with --budget-minutes, whichever ends first); several, "
                        "e.g. 1100,2200: a run for each (the quality-vs-budget curve)")
    parser.add_argument("--set", action="append", help="KEY=V1,V2,... (repeatable; every combination is a run)")
    parser.add_argument("--n", type=int, default=2000, help="samples per eval (compare FID only at equal N)")
    parser.add_argument("--w", default=None, help="guidance weight(s) of the evals, e.g. 0.5,1: each trained model is "
                        "scored at every one [default: each model's own, train.sample_w]")
    parser.add_argument("--w-max-sigma", type=float, default=None, help="guide only the steps at noise level "
                        "sigma <= S (tinydiff eval --w-max-sigma) [default: each model's own]")
    parser.add_argument("--sampler", default=None, help="eval's sampler [default: the engine's default]")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1: each setting runs once per seed")
    parser.add_argument("--dataset", default=None,
                        help="mnist, fashion-mnist or an image folder [default: the preset's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=f"sweeps/{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args(argv)
    if not args.budget_minutes and not args.train_steps:
        parser.error("give --budget-minutes M, --train-steps N, or both")
    if args.w is not None:
        guidance_weights(args.w)  # a bad value stops here, before any training
    if args.w_max_sigma is not None and not args.w_max_sigma > 0:  # also refuses nan
        parser.error(f"--w-max-sigma takes a positive noise level such as 5 (inf: every step), "
                     f"got {args.w_max_sigma:g}")
    step_budgets(args.train_steps)
    return args


if __name__ == "__main__":
    sweep(parse_args())
