"""Datasets as in-memory tensors: MNIST and Fashion-MNIST (loaded through torchvision) and folders of images (see
folders.py), behind one call, `load_dataset`.

A split is one uint8 tensor (N, C, H, W) and one int64 label tensor; training batches are drawn by indexing them
(`to_model_range(images[idx])`), so no per-image Python or PIL work happens in the loop.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import TinydiffError

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


def load_dataset(dataset: str, data_dir: str | Path | None = None, *, image_size: int | None = None,
                 channels: int | None = None, progress=None) -> Dataset:
    """`dataset` is mnist, fashion-mnist or a path to a folder of images (see folders.py). image_size and channels,
    when given, override what the data has (images are resized once, here). progress(done, total), when given, is
    called while a folder is decoded."""
    if is_builtin(dataset):
        train, test = (load_split(dataset, data_dir, train=t) for t in (True, False))
        train, test = (Split(reshape(s.images, image_size, channels), s.labels) for s in (train, test))
        info = DataInfo(dataset, train.images.shape[-1], train.images.shape[1], 10, tuple(CLASS_NAMES[dataset]))
        return Dataset(train, test, info)
    from .folders import load_folder

    check_dataset(dataset)
    return load_folder(dataset, image_size=image_size, channels=channels, progress=progress)


def load_dataset_of(data_cfg, data_dir: str | Path | None = None, progress=None, trained_on: DataInfo | None = None) -> Dataset:
    """The dataset a config's data section (config.DataConfig) names, at its image size and channels; data_dir
    overrides the config's. With `trained_on` (a checkpoint's DataInfo), a TinydiffError unless the data still has
    the shape and classes the model was trained on (a folder can change after training)."""
    data = load_dataset(data_cfg.dataset, data_dir or data_cfg.data_dir, image_size=data_cfg.image_size,
                        channels=data_cfg.channels, progress=progress)
    if trained_on is not None:
        check_same_data(data.info, trained_on)
    return data


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


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float (B, C, H, W) in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), the layout of sample .npz files."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def from_npz_layout(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C), the layout of .npz files and image libraries -> (N, C, H, W)."""
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
