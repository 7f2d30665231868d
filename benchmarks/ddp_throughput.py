"""Training images/s of `tinydiff train` with 1, 2, ... processes (DDP under torchrun), the same global batch.

    python benchmarks/ddp_throughput.py --data-dir ../shared/data                      # unet-small, 1 and 2 processes
    python benchmarks/ddp_throughput.py --preset unet-base --procs 1,2,4 --steps 200 --device cuda --precision bf16

Each run is the real command on real data, one after the other (never two at once), with previews, evals and
periodic checkpoints off. The speed is the job's images/s over the logging windows after the first (which holds
start-up and the first steps' allocations), as loss.csv records it. On a CPU the cores are split evenly over the
processes (OMP_NUM_THREADS = cores / processes), so 2 processes on 2 cores compete with 1 process on 2 threads.
It runs unchanged on a GPU box (--device cuda, one GPU per process).
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(procs: int, args, out: Path) -> float:
    """The job's images/s with `procs` processes."""
    command = ["train", "--preset", args.preset, "--out", str(out), "--max-steps", str(args.steps),
               "--device", args.device, "--set", "train.sample_rows=0", "--set", "train.eval_images=0",
               "--set", "train.checkpoint_every=1000000", "--set", f"train.log_every={args.log_every}"]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--precision", args.precision] if args.precision else []
    env = dict(os.environ)
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
    if procs == 1:
        launch = [sys.executable, "-m", "tinydiff_cli"]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                  "-m", "tinydiff_cli"]
    subprocess.run(launch + command, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(out / "loss.csv", newline="") as f:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(f) if row["train_loss"]]
    rates = rates[1:] or rates
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unet-small")
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in map(int, args.procs.split(",")):
            results.append((procs, run(procs, args, Path(tmp) / f"p{procs}")))
    base = results[0][1]
    print(f"{args.preset}, {args.steps} steps, device {args.device}, {os.cpu_count()} CPU cores")
    print("| processes | images/s | vs first |\n|---|---|---|")
    for procs, rate in results:
        print(f"| {procs} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
