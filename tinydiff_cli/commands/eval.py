"""`tinydiff eval`: sample from a checkpoint (or read an .npz) and score it."""
from __future__ import annotations

import contextlib
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..classifier import get_classifier
from ..data import CLASS_NAMES, DATASETS, to_uint8
from ..device import describe
from ..errors import TinydiffError
from ..evaluation import Score, Scorer
from ..ui import console, err_console, print_key_values
from ..checkpoint import Checkpoint
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


def read_npz(path: Path, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor | None]:
    """arr_0 uint8 images (N, 28, 28[, 1]) and optional arr_1 integer labels in [0, num_classes); shapes and
    dtypes are checked from the headers first, and nothing is ever unpickled (object arrays are refused)."""
    try:
        images_header, labels_header = npz_header(path, "arr_0"), npz_header(path, "arr_1")
        if images_header is None:
            raise KeyError("no arr_0")
        (shape, dtype), labels_shape = images_header, labels_header and labels_header[0]
        if dtype != np.uint8 or len(shape) not in (3, 4) or shape[1:3] != (28, 28) or shape[3:] not in ((), (1,)):
            raise TinydiffError(f"{path}: arr_0 must be uint8 images shaped (N, 28, 28[, 1]), got {dtype} {shape}")
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
    if labels is not None and labels.size and not (0 <= labels.min() and labels.max() < num_classes):
        raise TinydiffError(f"{path}: arr_1 labels must be class indices 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return torch.from_numpy(images), None if labels is None else torch.from_numpy(labels.astype(np.int64))


def sample_for_eval(ckpt: Checkpoint, *, digit: str, n: int, options: SamplingOptions, device: str, out_console):
    """-> uint8 images, labels and what to report about how they were drawn."""
    check_at_most_max_images(n)
    choice = parse_digit(digit, ckpt.data.num_classes)
    if n < 2:
        raise TinydiffError("--n must be at least 2: FID needs two samples or more")
    options = options.resolve(ckpt)
    pipe = load_pipeline(ckpt, device)
    labels = pipe.labels(choice, n)
    sampler = pipe.describe_sampler(options.sampler, options.steps)
    out_console.print(f"sampling {n} images from {source_of(ckpt)} with {sampler}, w={options.w:g} "
                      f"on {describe(pipe.device)}")
    start = time.perf_counter()
    images = pipe.sample(labels, **options.sample_kwargs())
    seconds = time.perf_counter() - start
    return to_uint8(images), labels, {"checkpoint": str(ckpt.json_path), "step": ckpt.step,
                                      "sampler": sampler, "eta": options.eta, "w": options.w, "seed": options.seed,
                                      "sampling_seconds": round(seconds, 2)}


def run_eval(*, checkpoint: Path | None, npz: Path | None, dataset: str | None, data_dir, digit: str, n: int,
             options: SamplingOptions, device: str, as_json: bool) -> Score:
    out_console = err_console if as_json else console
    if npz is not None:
        images, labels = read_npz(npz)
        dataset = dataset or "mnist"
        extra = {"npz": str(npz)}
    else:
        ckpt = open_checkpoint(checkpoint)
        dataset = dataset or ckpt.config.data.dataset
        data_dir = data_dir or ckpt.config.data.data_dir
        images, labels, extra = sample_for_eval(ckpt, digit=digit, n=n, options=options, device=device,
                                                out_console=out_console)
    if dataset not in DATASETS:
        raise TinydiffError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    # with --json, stdout carries only the JSON: what torchvision prints while downloading goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        classifier = get_classifier(dataset, data_dir, log=out_console.print)
        score = Scorer(classifier, dataset, data_dir).score(images, labels)
    score.extra = {"dataset": dataset, **extra}
    if as_json:
        print(json.dumps(score.to_dict(), indent=2))
    else:
        print_key_values(f"sample quality at N = {score.n} (compare only at equal N)", score_rows(score, CLASS_NAMES[dataset]))
    return score


def score_rows(score: Score, class_names: list[str]) -> list[tuple[str, str]]:
    acc = "n/a (unconditional)" if score.class_accuracy is None else f"{score.class_accuracy:.2%}"
    return [("FID (classifier features, vs test split)", f"{score.fid:.3f}"),
            (f"real-data floor (N={score.n} train images)", f"{score.fid_real_floor:.3f}"),
            ("class accuracy of conditional samples", acc),
            ("class histogram", "  ".join(f"{name}:{p:.0%}" for name, p in zip(class_names, score.class_histogram))),
            ("classifier test accuracy", f"{score.classifier_test_accuracy:.2%}")] + \
        [(key, str(value)) for key, value in score.extra.items()]
