"""`tinydiff eval`: sample from a checkpoint (or read an .npz) and score it."""
from __future__ import annotations

import contextlib
import json
import sys
import time
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
from .common import SamplingOptions, load_pipeline, open_checkpoint, parse_digit, source_of


def read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        arrays = np.load(path)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        images = arrays["arr_0"]
        labels = arrays["arr_1"] if "arr_1" in arrays.files else None
    except (OSError, ValueError, KeyError) as e:
        raise TinydiffError(f"{path} is not a sample .npz with arr_0 (and optional arr_1): {e}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[1:3] != (28, 28):
        raise TinydiffError(f"{path}: arr_0 must be uint8 images shaped (N, 28, 28[, 1]), got {images.dtype} {images.shape}")
    if images.shape[0] < 2:
        raise TinydiffError(f"{path}: FID needs at least 2 images, arr_0 has {images.shape[0]}")
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise TinydiffError(f"{path}: arr_1 has {labels.shape[0]} labels for {images.shape[0]} images")
    return torch.from_numpy(images), None if labels is None else torch.from_numpy(labels.astype(np.int64))


def sample_for_eval(ckpt: Checkpoint, *, digit: str, n: int, options: SamplingOptions, device: str, out_console):
    """-> uint8 images, labels and what to report about how they were drawn."""
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
