"""End-to-end sampling throughput (images/s) through Pipeline.sample: guidance, sampler loop and batching included.

Uses each preset's model with its initial weights (speed does not depend on the weights), so no checkpoint is needed:

    python benchmarks/sampling_throughput.py                       # unet-small and dit-small, DDIM-10 and DDIM-50
    python benchmarks/sampling_throughput.py unet-small --n 500 --steps 10
"""
import argparse
import time

import torch

from tinydiff_cli.io.checkpoint import DataInfo
from tinydiff_cli.config import load_config
from tinydiff_cli.data.datasets import CLASS_NAMES
from tinydiff_cli.models import build_model
from tinydiff_cli.sampling.pipeline import Pipeline


def measure(preset: str, n: int, steps: int, repeats: int = 2) -> float:
    cfg = load_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval().requires_grad_(False)
    pipe = Pipeline.from_model(model, cfg, DataInfo("mnist", 28, 1, 10, tuple(CLASS_NAMES["mnist"])))
    labels = pipe.labels("all", n)
    pipe.sample(labels[:20], sampler="ddim", steps=2, w=1.0)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.sample(labels, sampler="ddim", steps=steps, w=1.0, batch_size=100)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("presets", nargs="*", default=["unet-small", "dit-small"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; w=1, batch 100, best of 2")
    for preset in args.presets:
        for steps in args.steps:
            print(f"{preset:12s} DDIM-{steps:<3d} {args.n} images: {measure(preset, args.n, steps):7.1f} images/s")


if __name__ == "__main__":
    main()
