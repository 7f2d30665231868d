"""Datasets as in-memory tensors, and what every loader shares: the splits, what a model was trained on
(`DataInfo`), the pixel conversions. The loaders are mnist.py and folders.py, behind one call in load.py.

A split is one uint8 tensor (N, C, H, W) and one int64 label tensor; training batches are drawn by indexing them
(`to_model_range(images[idx])`), so no per-image Python or PIL work happens in the loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import TinydiffError

DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
MNIST_SIZE = 28  # both built-in datasets: 28x28 grey, 10 classes
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256  # the classifier pools three times; past 256 a CPU tool has no business


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,); the null class (num_classes) for an unlabelled folder

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class DataInfo:
    """What a model was trained on, as its checkpoint records it (the "data" entry of the JSON). `dataset` is a
    built-in name or the absolute path of an image folder; num_classes is 0 for an unlabelled folder (every label is
    then the null class 0, and the model is unconditional)."""

    dataset: str
    image_size: int
    channels: int
    num_classes: int  # the null (unconditional) class is label num_classes
    class_names: tuple[str, ...]

    @classmethod
    def from_meta(cls, data: dict, dataset: str) -> "DataInfo":
        """Defaults fill what checkpoints from before these keys existed lack: 28x28 grey, 10 classes."""
        dataset = data.get("dataset", dataset)
        num_classes = int(data.get("num_classes", 10))
        names = data.get("class_names") or CLASS_NAMES.get(dataset, [])
        if len(names) != num_classes:  # the model's label table is what counts
            names = [str(i) for i in range(num_classes)]
        info = cls(dataset, int(data.get("image_size", 28)), int(data.get("channels", 1)), num_classes,
                   tuple(str(name) for name in names))
        # Bounds before anything is built or sampled at this shape: a damaged or hostile file is refused here.
        if not (1 <= info.image_size <= 1024 and info.channels in (1, 3) and 0 <= info.num_classes <= 100_000):
            raise TinydiffError(f"its data entry is out of range (image size {info.image_size}, {info.channels} "
                                f"channels, {info.num_classes} classes)")
        return info

    def to_meta(self) -> dict:
        return {"dataset": self.dataset, "image_size": self.image_size, "channels": self.channels,
                "num_classes": self.num_classes, "class_names": list(self.class_names)}

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0

    @property
    def label(self) -> str:
        """'mnist', or a folder's name: for run folders and titles."""
        return self.dataset if is_builtin(self.dataset) else Path(self.dataset).name


@dataclass
class Dataset:
    """Both splits in memory and the facts a checkpoint records; `notes` are lines worth telling the user (how a
    folder was split, resized or cached)."""

    train: Split
    test: Split
    info: DataInfo
    notes: list[str] = field(default_factory=list)
    key: str | None = None  # a folder's fingerprint (changes with its files); None for a built-in dataset


def is_builtin(dataset: str) -> bool:
    return dataset in DATASETS


def cache_root() -> Path:
    """Where tinydiff keeps what it derives (decoded folders, classifiers for folders): $TINYDIFF_CACHE, else
    ~/.cache/tinydiff."""
    env = os.environ.get("TINYDIFF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinydiff"


def check_same_data(now: DataInfo, trained_on: DataInfo) -> None:
    """One line when a dataset no longer has the image shape or the classes a model was trained on."""
    def shape(info: DataInfo) -> str:
        return f"{info.image_size}x{info.image_size} {'grey' if info.channels == 1 else 'RGB'}"

    if now.shape != trained_on.shape:
        raise TinydiffError(f"{now.dataset} now loads as {shape(now)} images, but the model was trained on "
                            f"{shape(trained_on)} ones: the folder has changed since; restore it, or train anew")
    if now.class_names != trained_on.class_names:
        raise TinydiffError(f"{now.dataset} now has the classes {', '.join(now.class_names[:8]) or '(none)'}, but the "
                            f"model was trained on {', '.join(trained_on.class_names[:8]) or '(none)'}: the folder has "
                            f"changed since; restore it, or train anew")


def check_dataset(dataset: str) -> None:
    """A TinydiffError unless `dataset` is a built-in name or an existing folder."""
    if not is_builtin(dataset) and not Path(dataset).expanduser().is_dir():
        what = "a file, not a folder" if Path(dataset).expanduser().exists() else "not an existing folder"
        raise TinydiffError(f"--dataset '{dataset}' is neither {' nor '.join(DATASETS)} and is {what}; give one of "
                            f"those names or a folder of images (class subfolders for labels)")


def reshape(images: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) at another square size (antialiased bicubic) and/or channel count (grey <-> RGB by
    luma, ITU-R 601, as PIL's convert("L") does); unchanged when both are None or already so."""
    if channels is not None and channels != images.shape[1]:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        else:
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if image_size is not None and image_size != images.shape[-1]:
        resized = torch.nn.functional.interpolate(images.float(), size=(image_size, image_size), mode="bicubic",
                                                  antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float (B, C, H, W) in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), the layout of sample .npz files."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def from_npz_layout(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C), the layout of .npz files and image libraries -> (N, C, H, W)."""
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
