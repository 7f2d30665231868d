"""The speed/quality frontier of a checkpoint: FID, class accuracy and seconds per 1,000 images for several samplers
and distilled students, each through `tinydiff eval` (same seed, same N, same w: by default the checkpoint's own
train.sample_w), one after the other.

    python benchmarks/sampler_frontier.py runs/unet-small --data-dir ../shared/data --n 2000 \
        --runs "ddim 10" "dpm++2m 6" --distilled runs/unet-small-2step

Run it alone: two torch jobs on a 2-core machine slow each other several times over. Each result is also kept as
<out>/<name>-w<w>-n<N>.json, and a finished one is not run again (unless it was for another checkpoint, N or w),
so an interrupted frontier can be continued.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path


def is_for(score: dict, checkpoint: Path, args) -> bool:
    """Whether a cached score answers this request: the same checkpoint (a file, or a file in the folder given), N and,
    where --w is given, w."""
    scored = Path(score["extra"]["checkpoint"]).resolve()
    return (checkpoint.resolve() in (scored, scored.parent) and score["n"] == args.n
            and (args.w is None or score["extra"]["w"] == args.w))


def eval_once(args, name: str, flags: list[str], checkpoint: Path) -> dict:
    path = args.out / f"{name}-w{'model' if args.w is None else f'{args.w:g}'}-n{args.n}.json"
    if not path.exists() or not is_for(json.loads(path.read_text()), checkpoint, args):
        guidance = [] if args.w is None else ["--w", str(args.w)]
        cmd = [sys.executable, "-m", "tinydiff_cli", "eval", "--n", str(args.n), *guidance, "--json",
               "--data-dir", str(args.data_dir), *flags]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
        path.write_text(result.stdout)
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--w", type=float, default=None, help="guidance weight [default: each model's own]")
    parser.add_argument("--runs", nargs="*", default=["ddim 5", "ddim 10", "ddim 20", "dpm++2m 3", "dpm++2m 5",
                                                      "dpm++2m 6", "dpm++2m 10"],
                        help='"SAMPLER STEPS" pairs for the checkpoint')
    parser.add_argument("--distilled", nargs="*", type=Path, default=[])
    parser.add_argument("--out", type=Path, default=Path("frontier"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    plans = []
    for run in args.runs:
        sampler, steps = run.split()
        plans.append((f"{sampler}-{steps}", args.checkpoint, ["--sampler", sampler, "--steps", steps]))
    plans += [(f"distilled-{path.stem}", path, []) for path in args.distilled]

    w_label = "each model's own" if args.w is None else f"{args.w:g}"
    print(f"N = {args.n}, w = {w_label}, seed 0")
    print(f"{'sampler':<28} {'w':>5} {'FID':>7} {'floor':>6} {'class acc':>9} {'s / 1,000 images':>17}")
    for name, checkpoint, flags in plans:
        score = eval_once(args, name, ["--checkpoint", str(checkpoint), *flags], checkpoint)
        extra = score["extra"]
        per_1000 = extra["sampling_seconds"] / score["n"] * 1000
        print(f"{extra['sampler']:<28} {extra['w']:5g} {score['fid']:7.2f} {score['fid_real_floor']:6.2f} "
              f"{score['class_accuracy']:9.2%} {per_1000:17.1f}", flush=True)


if __name__ == "__main__":
    main()
