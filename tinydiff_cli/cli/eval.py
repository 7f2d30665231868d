"""`tinydiff eval`: sample from a checkpoint (or read an .npz) and score it."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..evaluation.classifier import check_scorable, get_classifier
from ..data.datasets import MNIST_SIZE, is_builtin, to_uint8
from ..data.load import load_dataset, load_dataset_of
from ..runtime.device import describe
from ..errors import TinydiffError
from ..evaluation.scorer import Score, Scorer
from .ui import console, err_console, print_key_values
from ..io.checkpoint import Checkpoint
from ..sampling.plan import SamplingPlan
from .common import SamplingOptions, check_at_most_max_images, load_pipeline, open_checkpoint, parse_digit, source_of


def npz_header(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """The shape and dtype an .npz member declares, read from its .npy header without reading (or decompressing)
    the data, so that a huge or hostile file is refused before it is loaded. None when there is no such member."""
    with zipfile.ZipFile(path) as archive:
        if f"{name}.npy" not in archive.namelist():
            return None
        with archive.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{name}.npy has format version {version}, which this reader does not take")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
    return shape, dtype


def read_npz(path: Path, num_classes: int | None = 10) -> tuple[torch.Tensor, torch.Tensor | None]:
    """arr_0 uint8 images (N, H, W[, C]) with C 1 or 3 and H = W, and optional arr_1 integer labels in
    [0, num_classes); shapes and dtypes are checked from the headers first, and nothing is ever unpickled (object
    arrays are refused). num_classes None leaves the labels' range to `check_labels`."""
    try:
        images_header, labels_header = npz_header(path, "arr_0"), npz_header(path, "arr_1")
        if images_header is None:
            raise KeyError("no arr_0")
        (shape, dtype), labels_shape = images_header, labels_header and labels_header[0]
        if (dtype != np.uint8 or len(shape) not in (3, 4) or shape[1] != shape[2] or not 8 <= shape[1] <= 1024
                or shape[3:] not in ((), (1,), (3,))):
            raise TinydiffError(f"{path}: arr_0 must be uint8 square images shaped (N, H, W) or (N, H, W, C) with C 1 "
                                f"or 3, got {dtype} {shape}")
        check_at_most_max_images(shape[0], flag=f"{path}: arr_0")
        if labels_header is not None and (labels_header[1].kind not in "iu" or labels_shape != (shape[0],)):
            raise TinydiffError(f"{path}: arr_1 must hold one integer label per image, got {labels_header[1]} "
                                f"{labels_shape} for {shape[0]} images")
        with np.load(path, allow_pickle=False) as arrays:
            images = arrays["arr_0"]
            labels = arrays["arr_1"] if labels_header is not None else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise TinydiffError(f"{path} is not a sample .npz with arr_0 (and optional arr_1): {e}") from None
    if images.shape[0] < 2:
        raise TinydiffError(f"{path}: FID needs at least 2 images, arr_0 has {images.shape[0]}")
    labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    if num_classes is not None:
        check_labels(path, labels, num_classes)
    return torch.from_numpy(images), labels


def check_labels(path: Path, labels: torch.Tensor | None, num_classes: int) -> None:
    if labels is not None and labels.numel() and not (0 <= labels.min() and labels.max() <= num_classes):
        raise TinydiffError(f"{path}: arr_1 labels must be class indices 0..{num_classes - 1} (or {num_classes}, the "
                            f"null class, for unconditional samples), got {int(labels.min())}..{int(labels.max())}")


def check_sampling(ckpt: Checkpoint, *, digit: str, n: int, options: SamplingOptions):
    """The flags checked against the checkpoint, before anything is loaded: -> (class choice, sampling plan)."""
    check_at_most_max_images(n)
    choice = parse_digit(digit, ckpt.data.class_names)
    if n < 2:
        raise TinydiffError("--n must be at least 2: FID needs two samples or more")
    return choice, options.plan(ckpt)


def sample_for_eval(ckpt: Checkpoint, *, choice, n: int, plan: SamplingPlan, options: SamplingOptions, device: str,
                    out_console):
    """-> uint8 images, labels and what to report about how they were drawn."""
    pipe = load_pipeline(ckpt, device)
    labels = pipe.labels(choice, n)
    out_console.print(f"sampling {n} images from {source_of(ckpt)} with {plan.label}, {plan.guidance} "
                      f"on {describe(pipe.device)}")
    start = time.perf_counter()
    images = pipe.sample(labels, plan, seed=options.seed, batch_size=options.batch_size)
    seconds = time.perf_counter() - start
    return to_uint8(images), labels, {"checkpoint": str(ckpt.json_path), "step": ckpt.step,
                                      "sampler": plan.label, "eta": plan.eta, "w": plan.w,
                                      "w_max_sigma": None if plan.max_sigma == math.inf else plan.max_sigma,
                                      "seed": options.seed,
                                      "sampling_seconds": round(seconds, 2)}


def run_eval(*, checkpoint: Path | None, npz: Path | None, dataset: str | None, data_dir, digit: str, n: int,
             options: SamplingOptions, device: str, as_json: bool) -> Score:
    out_console = err_console if as_json else console
    # Everything that can be checked cheaply comes first, so that nothing fails after training a classifier or
    # sampling: the flags, the .npz's headers, whether the model's data can be scored at all.
    ckpt = None if npz is not None else open_checkpoint(checkpoint)
    if npz is not None:
        builtin = is_builtin(dataset or "mnist")  # 28x28 grey, 10 classes: known without loading
        images, labels = read_npz(npz, num_classes=10 if builtin else None)
        extra = {"npz": str(npz)}
        if builtin:
            check_same_shape(npz_shape(images), (1, MNIST_SIZE, MNIST_SIZE), dataset or "mnist", npz)
    else:
        choice, plan = check_sampling(ckpt, digit=digit, n=n, options=options)
        check_scorable(ckpt.data)
    # with --json, stdout carries only the JSON: what torchvision prints while downloading goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        if ckpt is not None and (dataset is None or same_dataset(dataset, ckpt.config.data.dataset)):
            data = load_dataset_of(ckpt.config.data, data_dir, trained_on=ckpt.data)
        else:  # an .npz is scored at its own size (a folder is resized to it); a model against another dataset
            c, h, _ = npz_shape(images) if npz is not None else (None, None, None)
            data = load_dataset(dataset or "mnist", data_dir, image_size=h, channels=c)
            if ckpt is not None:
                check_same_shape(ckpt.data.shape, data.info.shape, data.info.dataset, ckpt.json_path)
        if npz is not None:
            check_same_shape(npz_shape(images), data.info.shape, data.info.dataset, npz)
            check_labels(npz, labels, data.info.num_classes)
        classifier = get_classifier(data, data_dir or (ckpt and ckpt.config.data.data_dir), log=out_console.print)
    if npz is None:
        images, labels, extra = sample_for_eval(ckpt, choice=choice, n=n, plan=plan, options=options, device=device,
                                                out_console=out_console)
    score = Scorer(classifier, data).score(images, labels)
    score.extra = {"dataset": data.info.dataset, **extra}
    if as_json:
        print(json.dumps(score.to_dict(), indent=2))
    else:
        print_key_values(f"sample quality at N = {score.n} (compare only at equal N)", score_rows(score, data.info.class_names))
    return score


def same_dataset(given: str, stored: str) -> bool:
    """--dataset names the dataset a model was trained on: the same built-in name, or the same folder."""
    if is_builtin(given) or is_builtin(stored):
        return given == stored
    return Path(given).expanduser().resolve() == Path(stored)


def npz_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of uint8 images in the .npz layout (N, H, W[, C])."""
    return images.shape[3] if images.ndim == 4 else 1, images.shape[1], images.shape[2]


def check_same_shape(source_shape: tuple[int, int, int], shape: tuple[int, int, int], dataset: str, source) -> None:
    """The (C, H, W) of `source`'s images against the dataset's: one line when they differ."""
    c, h, w = source_shape
    if (c, h, w) != tuple(shape):
        ds, dh, dw = shape
        raise TinydiffError(f"{source} holds {h}x{w} images with {c} channel{'s' if c > 1 else ''}, but {dataset}'s "
                            f"are {dh}x{dw} with {ds}; score them against their own dataset (--dataset)")


def floor_label(score: Score) -> str:
    if score.floor_n == score.n:
        return f"real-data floor (N={score.n} train images)"
    return (f"real-data floor (N={score.floor_n}: all the train images, fewer than the {score.n} samples; "
            f"FID's bias differs between the two N)")


def score_rows(score: Score, class_names) -> list[tuple[str, str]]:
    acc = "n/a (unconditional)" if score.class_accuracy is None else f"{score.class_accuracy:.2%}"
    return [("FID (classifier features, vs test split)", f"{score.fid:.3f}"),
            (floor_label(score), f"{score.fid_real_floor:.3f}"),
            ("class accuracy of conditional samples", acc),
            ("class histogram", "  ".join(f"{name}:{p:.0%}" for name, p in zip(class_names, score.class_histogram))),
            ("classifier test accuracy", f"{score.classifier_test_accuracy:.2%}")] + \
        [(key, str(value)) for key, value in score.extra.items()]
