"""Sampling throughput of a trained checkpoint against the forward batch size (forward passes only).

    python benchmarks/sampling_batch.py runs/unet-small
"""
import sys
import time

import torch

from tinydiff_cli.sampling.pipeline import Pipeline


def main(checkpoint: str = "runs/unet-small", repeats: int = 3) -> None:
    model = Pipeline.from_checkpoint(checkpoint).model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (50, 100, 200, 500, 1000):
        x, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500)
        labels = torch.zeros(batch, dtype=torch.long)
        with torch.no_grad():
            model(x, t, labels)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                model(x, t, labels)
        print(f"batch {batch:5d}: {repeats * batch / (time.perf_counter() - start):7.0f} image-steps/s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
