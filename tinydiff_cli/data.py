"""MNIST and Fashion-MNIST as in-memory tensors, loaded once through torchvision.

A split becomes one uint8 tensor (N, 28, 28) and one int64 label tensor; training batches are drawn by
indexing them (`to_model_range(images[idx])`), so no per-image Python or PIL work happens in the loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TinydiffError

DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
IMAGE_SIZE, CHANNELS, NUM_CLASSES = 28, 1, 10


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def default_data_dir() -> Path:
    env = os.environ.get("TINYDIFF_DATA")
    return Path(env) if env else Path.home() / ".cache" / "tinydiff" / "data"


def load_split(dataset: str, data_dir: str | Path | None = None, train: bool = True) -> Split:
    """Read a split from `data_dir/<Name>/raw/` (torchvision's layout), downloading it when missing
    unless TINYDIFF_OFFLINE=1."""
    from torchvision import datasets

    if dataset not in DATASETS:
        raise TinydiffError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    cls = getattr(datasets, DATASETS[dataset])
    raw = root / DATASETS[dataset] / "raw"
    offline = os.environ.get("TINYDIFF_OFFLINE", "") not in ("", "0")
    try:
        ds = cls(str(root), train=train, download=not offline)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... for missing files
        _remove_if_empty(raw)
        why = "downloads are off (TINYDIFF_OFFLINE)" if offline else f"the download failed ({type(e).__name__})"
        raise TinydiffError(
            f"{DATASETS[dataset]} not found in {raw} and {why}; copy the IDX files (train-images-idx3-ubyte, ...) "
            f"there, or point --data-dir or TINYDIFF_DATA at a folder that holds {DATASETS[dataset]}/raw/") from None
    images, labels = ds.data, ds.targets
    if images.dtype != torch.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise TinydiffError(f"{raw} holds images of shape {tuple(images.shape[1:])}, expected 28x28 uint8")
    return Split(images.contiguous(), labels.to(torch.int64).contiguous())


def _remove_if_empty(folder: Path) -> None:
    """A failed download leaves empty folders behind; take them away again."""
    for path in (folder, folder.parent):
        try:
            path.rmdir()  # only succeeds when empty
        except OSError:
            return


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) in [0, 255] -> float (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, 1, H, W) in [-1, 1] -> uint8 (B, H, W, 1), the layout of sample .npz files."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
