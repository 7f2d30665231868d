"""What the benchmarks that vary how images are drawn share: the checkpoint arguments, and scoring drawn images the
way `tinydiff eval` does (written to an .npz, then `tinydiff eval --npz`), so a variant is measured by the same code
as the engine's default."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tinydiff_cli.data.datasets import to_uint8


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, where the data is, the device, N, the sampler and its steps."""
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=None, help="[default: eval's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None)


def score_images(images: torch.Tensor, labels: torch.Tensor, npz: Path, dataset: str, data_dir: Path | None) -> dict:
    """Writes images in [-1, 1] and their labels to `npz` and returns `tinydiff eval --npz --json`'s result."""
    np.savez(npz, arr_0=to_uint8(images).numpy(), arr_1=labels.numpy().astype(np.int64))
    cmd = [sys.executable, "-m", "tinydiff_cli", "eval", "--npz", str(npz), "--dataset", dataset, "--json",
           *(["--data-dir", str(data_dir)] if data_dir else [])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return json.loads(result.stdout[result.stdout.index("{"):])
