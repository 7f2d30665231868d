"""Training throughput (images/s) of each preset's model: forward, backward and AdamW step on random data.

    python benchmarks/train_throughput.py                 # every preset, its own batch size
    python benchmarks/train_throughput.py unet-small dit-small --steps 10
    python benchmarks/train_throughput.py unet-small --set model.base_channels=24   # a variant of a preset
"""
import argparse
import time

import torch

from tinydiff_cli.config import available_presets, load_config
from tinydiff_cli.diffusion.loss import diffusion_loss
from tinydiff_cli.models import build_model


def measure(preset: str, steps: int, warmup: int = 2, overrides: list[str] | None = None) -> tuple[int, int, float]:
    cfg = load_config(preset, overrides)
    # the preset's own image shape (data.image_size, data.channels), else MNIST's 28x28 grey
    size, channels = cfg.data.image_size or 28, cfg.data.channels or 1
    model = build_model(cfg.model, image_size=size, in_channels=channels)
    formulation = cfg.diffusion.formulation()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = cfg.train.batch_size
    parameters = sum(p.numel() for p in model.parameters())
    x0, labels = torch.rand(batch, channels, size, size) * 2 - 1, torch.randint(0, 11, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = diffusion_loss(model, formulation, x0, labels, min_snr_gamma=cfg.diffusion.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch, parameters, steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("presets", nargs="*", default=available_presets())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a preset key, as tinydiff train --set (repeatable)")
    args = parser.parse_args()
    overrides = f", {' '.join(args.set)}" if args.set else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads{overrides}")
    for preset in args.presets:
        batch, parameters, rate = measure(preset, args.steps, overrides=args.set)
        print(f"{preset:12s} {parameters / 1e6:5.2f}M parameters, batch {batch:4d}: {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
