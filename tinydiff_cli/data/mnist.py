"""MNIST and Fashion-MNIST: read from their IDX files in torchvision's layout (data_dir/<Name>/raw/), downloaded
when missing unless TINYDIFF_OFFLINE=1, with damaged files named in one line."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import TinydiffError
from .datasets import DATASETS, MNIST_SIZE, Split


def default_data_dir() -> Path:
    env = os.environ.get("TINYDIFF_DATA")
    return Path(env) if env else Path.home() / ".cache" / "tinydiff" / "data"


def load_split(dataset: str, data_dir: str | Path | None = None, train: bool = True) -> Split:
    """Read a split of a built-in dataset from `data_dir/<Name>/raw/` (torchvision's layout), downloading it when
    missing unless TINYDIFF_OFFLINE=1: uint8 (N, 1, 28, 28)."""
    from torchvision import datasets

    if dataset not in DATASETS:
        raise TinydiffError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    cls = getattr(datasets, DATASETS[dataset])
    raw = root / DATASETS[dataset] / "raw"
    offline = os.environ.get("TINYDIFF_OFFLINE", "") not in ("", "0")
    check_idx_files(raw, train)
    try:
        ds = cls(str(root), train=train, download=not offline)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... for missing files
        _remove_if_empty(raw)
        why = "downloads are off (TINYDIFF_OFFLINE)" if offline else f"the download failed ({type(e).__name__})"
        raise TinydiffError(
            f"{DATASETS[dataset]} not found in {raw} and {why}; copy the IDX files (train-images-idx3-ubyte, ...) "
            f"there, or point --data-dir or TINYDIFF_DATA at a folder that holds {DATASETS[dataset]}/raw/") from None
    images, labels = ds.data, ds.targets
    if images.dtype != torch.uint8 or images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise TinydiffError(f"{raw} holds images of shape {tuple(images.shape[1:])}, expected 28x28 uint8")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < 10):
        raise TinydiffError(f"{raw} holds labels {int(labels.min())}..{int(labels.max())}, expected 0..9; "
                            f"the label file is damaged: copy it anew")
    return Split(images.unsqueeze(1).contiguous(), labels.to(torch.int64).contiguous())


# IDX files (LeCun's MNIST format): a big-endian magic of 0x08 (uint8 data) and the number of dimensions, then one
# uint32 size per dimension, then the data.
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """The shape an uncompressed IDX file declares, after checking its magic number and its length."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    fix = "delete it (tinydiff downloads it again) or copy it anew"
    if len(header) < 4 + 4 * ndim:
        raise TinydiffError(f"{path} is truncated ({size} bytes, shorter than its header); {fix}")
    magic = int.from_bytes(header[:4], "big")
    if magic != 0x0800 + ndim:
        raise TinydiffError(f"{path} is not an IDX file of uint8 with {ndim} dimension{'s' if ndim > 1 else ''} "
                            f"(magic number {magic:#010x}, expected {0x0800 + ndim:#010x}); {fix}")
    shape = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise TinydiffError(f"{path} is {state}: its header declares {shape} ({expected} bytes), the file has {size} "
                            f"bytes; {fix}")
    return shape


def check_idx_files(raw: Path, train: bool) -> None:
    """Damaged raw files get a message naming the file, not a parser's error: a wrong magic number, a truncated
    file, images that are not 28x28, or image and label counts that disagree. Files that are absent are left to
    torchvision (which downloads them, or fails and is reported as missing)."""
    images_path, labels_path = (raw / name for name in IDX_FILES[train])
    if not (images_path.exists() and labels_path.exists()):
        return
    images, labels = idx_shape(images_path, 3), idx_shape(labels_path, 1)
    if images[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise TinydiffError(f"{images_path} holds images of {images[1]}x{images[2]}, expected {MNIST_SIZE}x{MNIST_SIZE}")
    if images[0] != labels[0]:
        raise TinydiffError(f"{images_path} holds {images[0]} images but {labels_path.name} holds {labels[0]} labels; "
                            f"one of the two is from another set: copy both anew")


def _remove_if_empty(folder: Path) -> None:
    """A failed download leaves empty folders behind; take them away again."""
    for path in (folder, folder.parent):
        try:
            path.rmdir()  # only succeeds when empty
        except OSError:
            return
