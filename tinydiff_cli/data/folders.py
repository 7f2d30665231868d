"""A folder of images as a dataset: `--dataset PATH`.

    folder/cat/001.png, folder/dog/x.jpg ...   class subfolders (torchvision's ImageFolder layout): labelled, the
                                               classes sorted by name, the names kept in the checkpoint
    folder/001.png, folder/002.png ...         no subfolders: unlabelled, the model trains unconditionally
    folder/train/<class>/..., folder/test/...  (or val/) the two splits chosen by the user

Without train/ and test/, every 10th image of each class (in file-name order) is held out as the test split: the
eval loss and the FID reference are then images the model never trained on. PNG, JPEG, BMP, GIF (the first frame)
and WebP are read with Pillow. Transparent pixels are composited over white.

The images are decoded once into one uint8 tensor (N, C, H, W) and cached in <cache>/folders/ (see
data.cache_root); the cache records every file's name, size and modification time, so a changed folder is decoded
again and an unchanged one loads at once. Size and channels come from the images, unless given: grey when every
pixel of every image has R = G = B, else RGB; the images' own size when they all share one square size, else
`data.image_size` must be set, and each image is then resized (Lanczos, shorter side to the size) and centre-cropped.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.atomic import write_safetensors
from .datasets import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, DataInfo, Dataset, Split, cache_root, reshape
from ..errors import TinydiffError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEST_SPLIT_NAMES = ("test", "val", "valid", "validation")
HOLD_OUT_EVERY = 10  # every 10th image of each class is held out as the test split
MAX_DECODED_BYTES = 2 * 2**30  # decoded RGB; the peak while decoding and caching is a few times this
CACHE_VERSION = 1  # bump when decoding changes: older caches are then decoded again
SET_SIZE = "--set data.image_size=N (each image is then resized, shorter side to N, and centre-cropped once)"


@dataclass
class Layout:
    """The files of a folder dataset, labelled: what `scan` found, before anything is decoded."""

    root: Path
    class_names: tuple[str, ...]  # () for an unlabelled folder
    train: list[tuple[Path, int]]  # (file, label); label num_classes (0) when unlabelled
    test: list[tuple[Path, int]]
    held_out: bool  # True when the test split was taken from the training images (no train/ and test/)

    def files(self) -> list[Path]:
        return [path for path, _ in self.train + self.test]


def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[Path]:
    """Image files in `folder` and below, in a stable (sorted) order; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and _is_image(f)]
    return found


def _no_images_message(folder: Path) -> str:
    others = [f.name for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")][:3]
    also = f" (it holds other files, such as {', '.join(others)})" if others else ""
    return f"{folder} holds no images{also}; tinydiff reads {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files"


def _scan_split(folder: Path) -> tuple[tuple[str, ...], list[list[Path]]]:
    """(class names, files per class) of one split: class subfolders, or a flat folder ((), [files])."""
    with os.scandir(folder) as it:
        entries = _visible(it)
    loose = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    subfolders = [Path(e.path) for e in entries if e.is_dir()]
    per_class = [(sub.name, _images_under(sub)) for sub in subfolders]
    if loose:
        labelled = [name for name, files in per_class if files]
        if labelled:
            raise TinydiffError(f"{folder} mixes images at its top level ({loose[0].name}, ...) with class subfolders "
                                f"({', '.join(labelled[:3])}); put every image in a class subfolder, or none of them")
        return (), [loose]
    if not per_class:
        raise TinydiffError(_no_images_message(folder))
    empty = [name for name, files in per_class if not files]
    if empty and len(empty) == len(per_class):
        raise TinydiffError(_no_images_message(folder))
    if empty:
        raise TinydiffError(f"class folder {folder / empty[0]} holds no images"
                            + (f" (nor do {', '.join(empty[1:4])})" if len(empty) > 1 else "")
                            + "; add images to it or remove it")
    return tuple(name for name, _ in per_class), [files for _, files in per_class]


def _labelled(per_class: list[list[Path]], unlabelled: bool) -> list[tuple[Path, int]]:
    return [(path, 0 if unlabelled else label) for label, files in enumerate(per_class) for path in files]


def scan(root: str | Path) -> Layout:
    """The files of the dataset at `root` and their labels; a TinydiffError for a folder that cannot be one."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise TinydiffError(f"{root} is not a folder")
    with os.scandir(root) as it:
        entries = {e.name: e for e in _visible(it)}
    test_name = next((n for n in TEST_SPLIT_NAMES if n in entries and entries[n].is_dir()), None)
    has_loose_images = any(e.is_file() and _is_image(name) for name, e in entries.items())
    if "train" in entries and entries["train"].is_dir() and test_name and not has_loose_images:
        names, train = _scan_split(root / "train")
        test_names, test = _scan_split(root / test_name)
        if bool(test_names) != bool(names):
            labelled, flat = (root / "train", root / test_name) if names else (root / test_name, root / "train")
            raise TinydiffError(f"{labelled} has class folders but {flat} does not; give both splits the same class "
                                f"folders, or neither")
        if not set(test_names) <= set(names):
            extra = sorted(set(test_names) - set(names))
            raise TinydiffError(f"{root / test_name} has classes that {root / 'train'} lacks ({', '.join(extra[:3])}); "
                                f"both splits need the same class folders")
        index = {name: i for i, name in enumerate(names)}
        test_labelled = [(p, index[test_names[k]] if names else 0) for k, files in enumerate(test) for p in files]
        return Layout(root, names, _labelled(train, not names), test_labelled, held_out=False)
    names, per_class = _scan_split(root)
    train, test = [], []
    for label, files in enumerate(per_class):
        for i, path in enumerate(files):
            (test if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else train).append((path, label if names else 0))
    return Layout(root, names, train, test, held_out=True)


def fingerprint(layout: Layout, image_size: int | None, channels: int | None) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or relabelled, or the settings change."""
    h = hashlib.sha256(f"v{CACHE_VERSION} size={image_size} channels={channels} "
                       f"classes={json.dumps(layout.class_names)}\n".encode())
    for split, items in (("train", layout.train), ("test", layout.test)):
        for path, label in items:
            st = path.stat()
            h.update(f"{split}\t{path.relative_to(layout.root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_path(root: Path, image_size: int | None, channels: int | None) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return cache_root() / "folders" / f"{root.name}-{key}-size{image_size or 'auto'}-ch{channels or 'auto'}.safetensors"


# ---- decoding ----------------------------------------------------------------------------------------------------
def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.seek(0)  # the first frame of an animated GIF or WebP
        return image
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, EOFError) as e:
        raise _Unreadable(path, e) from None


class _Unreadable(Exception):
    def __init__(self, path: Path, error: Exception):
        from PIL import UnidentifiedImageError

        self.path = path
        self.reason = ("not an image Pillow can read" if isinstance(error, UnidentifiedImageError)
                       else str(error) or type(error).__name__)


def image_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each file from its header (nothing is decoded); unreadable files are named together."""
    sizes, bad = [], []
    for path in files:
        try:
            with _open(path) as image:
                sizes.append(image.size)
        except _Unreadable as e:
            bad.append(e)
    if bad:
        named = "; ".join(f"{e.path} ({e.reason})" for e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise TinydiffError(f"{len(bad)} file{'s' if len(bad) > 1 else ''} could not be read as images: {named}{more}; "
                            f"remove or replace {'them' if len(bad) > 1 else 'it'}")
    return sizes


def choose_size(files: list[Path], sizes: list[tuple[int, int]], image_size: int | None) -> int:
    """The square size to train at: `image_size` when given, else the images' one shared square size."""
    if image_size is not None:
        return image_size
    counts: dict[tuple[int, int], list[Path]] = {}
    for path, size in zip(files, sizes):
        counts.setdefault(size, []).append(path)
    if len(counts) > 1:
        common = sorted(counts.items(), key=lambda kv: -len(kv[1]))[:3]
        listed = ", ".join(f"{len(paths)} are {w}x{h} (e.g. {paths[0].name})" for (w, h), paths in common)
        raise TinydiffError(f"the images have different sizes: {listed}; choose one size with {SET_SIZE}")
    (w, h), = counts
    if w != h:
        raise TinydiffError(f"the images are {w}x{h}, not square; choose a square size with {SET_SIZE}")
    if not MIN_IMAGE_SIZE <= w <= MAX_IMAGE_SIZE:
        raise TinydiffError(f"the images are {w}x{h}; tinydiff trains on sizes {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}: "
                            f"choose one with --set data.image_size=N")
    return w


def decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (size, size, 3) RGB: transparency over white, resized (Lanczos) and centre-cropped when
    it is not already size x size."""
    from PIL import Image

    with _open(path) as image:
        try:
            image.load()
        except (OSError, ValueError, EOFError) as e:
            raise _Unreadable(path, e) from None
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        w, h = rgb.size
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        rgb = rgb.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - size) // 2, (rh - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8)


def decode_all(files: list[Path], size: int, progress=None) -> torch.Tensor:
    """uint8 (N, 3, size, size); progress(done, total) now and then."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    bad = []
    for i, path in enumerate(files):
        try:
            out[i] = decode(path, size)
        except _Unreadable as e:
            bad.append(e)
        if progress is not None and (i % 500 == 0 or i + 1 == len(files)):
            progress(i + 1, len(files))
    if bad:
        named = "; ".join(f"{e.path} ({e.reason})" for e in bad[:5])
        raise TinydiffError(f"{len(bad)} file{'s' if len(bad) > 1 else ''} could not be decoded: {named}; remove or "
                            f"replace {'them' if len(bad) > 1 else 'it'}")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """RGB uint8 (N, 3, H, W) -> grey (N, 1, H, W) when asked for, or when not asked and every pixel is grey."""
    grey = bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
    if channels == 3 or (channels is None and not grey):
        return images
    return images[:, :1].contiguous() if grey else reshape(images, None, 1)  # luma, ITU-R 601


# ---- the dataset -------------------------------------------------------------------------------------------------
def load_folder(root: str | Path, *, image_size: int | None = None, channels: int | None = None,
                progress=None) -> Dataset:
    """The folder as a Dataset, from the cache when the folder has not changed since it was decoded."""
    layout = scan(root)
    if image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise TinydiffError(f"data.image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size}")
    if channels not in (None, 1, 3):
        raise TinydiffError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    key = fingerprint(layout, image_size, channels)
    cache = cache_path(layout.root, image_size, channels)
    notes = []
    cached = _read_cache(cache, key)
    if cached is not None:
        train, test = cached
        notes.append(f"read {len(train) + len(test):,} images from the cache {cache} (decoded before; the folder is unchanged)")
    else:
        files = layout.files()
        size = choose_size(files, image_sizes(files), image_size)
        needed = len(files) * 3 * size * size
        if needed > MAX_DECODED_BYTES:
            raise TinydiffError(f"{len(files):,} images of {size}x{size} need {needed / 2**30:.1f} GiB decoded, more "
                                f"than tinydiff holds in memory ({MAX_DECODED_BYTES / 2**30:.0f} GiB); choose a smaller "
                                f"size with --set data.image_size=N")
        images = to_channels(decode_all(files, size, progress), channels)
        labels = torch.tensor([label for _, label in layout.train + layout.test], dtype=torch.int64)
        n = len(layout.train)
        train, test = Split(images[:n], labels[:n]), Split(images[n:], labels[n:])
        try:
            write_safetensors(cache, {"train_images": train.images, "train_labels": train.labels,
                                      "test_images": test.images, "test_labels": test.labels},
                              metadata={"fingerprint": key, "root": str(layout.root)})
            notes.append(f"decoded {len(files):,} images once; cached at {cache}")
        except TinydiffError as e:  # the cache only saves time: training goes on without it
            notes.append(f"decoded {len(files):,} images (not cached: {e})")
    if layout.held_out:
        notes.append(f"held out {len(test):,} of {len(train) + len(test):,} images (every {HOLD_OUT_EVERY}th of each "
                     f"class) as the test split, for the eval loss and FID; train/ and test/ subfolders choose it instead")
    if len(test) == 0:
        test = train
        notes.append(f"the folder is too small to hold images out (fewer than {HOLD_OUT_EVERY} per class): the eval "
                     f"loss and FID are measured on the training images")
    info = DataInfo(str(layout.root), train.images.shape[-1], train.images.shape[1], len(layout.class_names),
                    layout.class_names)
    return Dataset(train, test, info, notes, key)


def _read_cache(path: Path, key: str) -> tuple[Split, Split] | None:
    """Both splits from the cache file, or None when it is absent, from another state of the folder, or unreadable."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") != key:
                return None
            t = {name: f.get_tensor(name) for name in ("train_images", "train_labels", "test_images", "test_labels")}
    except Exception:  # a damaged cache is decoded again, as an absent one
        return None
    return Split(t["train_images"], t["train_labels"]), Split(t["test_images"], t["test_labels"])
