"""Training throughput (images/s) of each preset's model: forward, backward and AdamW step on random data.

    python benchmarks/train_throughput.py                 # every preset, its own batch size
    python benchmarks/train_throughput.py unet-small dit-small --steps 10
"""
import argparse
import time

import torch

from tinydiff_cli.config import available_presets, load_config
from tinydiff_cli.losses import diffusion_loss
from tinydiff_cli.models import build_model
from tinydiff_cli.parameterization import get_parameterization
from tinydiff_cli.schedules import make_schedule


def measure(preset: str, steps: int, warmup: int = 2) -> tuple[int, float]:
    cfg = load_config(preset)
    model = build_model(cfg.model)
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    parameterization = get_parameterization(cfg.diffusion.objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = cfg.train.batch_size
    x0, labels = torch.rand(batch, 1, 28, 28) * 2 - 1, torch.randint(0, 11, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = diffusion_loss(model, schedule, parameterization, x0, labels, min_snr_gamma=cfg.diffusion.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch, steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("presets", nargs="*", default=available_presets())
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in args.presets:
        batch, rate = measure(preset, args.steps)
        print(f"{preset:12s} batch {batch:4d}: {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
