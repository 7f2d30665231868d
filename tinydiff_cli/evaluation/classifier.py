"""A small CNN classifier for each dataset: the feature space for FID and the judge of class accuracy.

tinydiff trains it itself on the training split the first time it is needed (about a minute or two on a
laptop CPU for MNIST) and caches it (beside MNIST's files; for a folder, in <cache>/classifiers under the folder's
fingerprint, so a changed folder gets a new one): no weights are ever downloaded. Its test accuracy travels with the
weights and is reported with every score.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..io.atomic import write_safetensors, write_text_atomic
from ..data.datasets import DataInfo, Dataset, Split, cache_root, is_builtin, to_model_range
from ..data.mnist import default_data_dir
from ..errors import TinydiffError

FEATURE_DIM = 128
CLASSIFIER_VERSION = 1  # bump when the architecture or recipe changes: scores are only comparable within one


class Classifier(nn.Module):
    """Three conv blocks (BatchNorm, ReLU, max-pool), pooled to 3x3, and a 128-d penultimate layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        # 28 -> 14 -> 7 -> 3, where the adaptive pool is the identity (so MNIST's cached weights and scores are those
        # of before it existed); other sizes are pooled to the same 3x3
        self.body = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(3),
                                  nn.Flatten())
        self.features_layer = nn.Sequential(nn.Linear(128 * 3 * 3, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_layer(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class TrainedClassifier:
    model: Classifier
    test_accuracy: float
    path: Path

    @torch.no_grad()
    def embed(self, images_uint8: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) -> (features float64 (N, 128), predicted classes (N,))."""
        feats, preds = [], []
        device = next(self.model.parameters()).device
        for start in range(0, images_uint8.shape[0], batch_size):
            x = to_model_range(images_uint8[start:start + batch_size].to(device))
            f = self.model.features(x)
            feats.append(f.double().cpu())
            preds.append(self.model.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)


def train_classifier(train: Split, test: Split, num_classes: int = 10, *, epochs: int | None = None,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0, log=print) -> tuple[Classifier, float]:
    """Adam with a one-cycle-like cosine decay; returns the model (eval mode) and its test accuracy. epochs None: 2,
    or more for a small folder (up to 10), so that it still sees about 100 batches (MNIST: 2 epochs, 936 steps)."""
    torch.manual_seed(seed)
    model = Classifier(num_classes, train.images.shape[1])
    batch_size = min(batch_size, len(train))
    if epochs is None:
        epochs = max(2, min(10, math.ceil(100 / (len(train) // batch_size))))
    steps = epochs * (len(train) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for b in range(len(train) // batch_size):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(to_model_range(train.images[idx])), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        correct = sum((model(to_model_range(test.images[i:i + 1000])).argmax(1) == test.labels[i:i + 1000]).sum().item()
                      for i in range(0, len(test), 1000))
    return model, correct / len(test)


def classifier_path(data: Dataset, data_dir: str | Path | None) -> Path:
    """MNIST's and Fashion-MNIST's beside their data when that folder is writable, else in <cache>/classifiers; a
    folder's in <cache>/classifiers, named after its fingerprint."""
    if not is_builtin(data.info.dataset):
        return cache_root() / "classifiers" / f"tinydiff-classifier-{data.info.label}-{data.key[:16]}-v{CLASSIFIER_VERSION}.safetensors"
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    c, h, _ = data.info.shape
    shape = "" if (c, h) == (1, 28) else f"-{h}px-{c}ch"  # resized or converted (data.image_size, data.channels)
    name = f"tinydiff-classifier-{data.info.dataset}{shape}-v{CLASSIFIER_VERSION}.safetensors"
    if root.is_dir() and _writable(root):
        return root / name
    return cache_root() / "classifiers" / name


def _writable(folder: Path) -> bool:
    """Writable for us, and not marked read-only (root passes os.access even on a folder without write bits)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o200)


def _load_cached(path: Path, meta_path: Path, data: Dataset, log) -> tuple[Classifier, float] | None:
    """The cached classifier, or None (and a line saying so) when the cache is damaged: it is then trained again.
    Both files are written atomically, tensors first, so an eval killed while training leaves either no cache or
    tensors without their JSON, which reads as no cache."""
    try:
        model = Classifier(data.info.num_classes, data.info.channels)
        model.load_state_dict(load_file(str(path)))
        accuracy = float(json.loads(meta_path.read_text())["test_accuracy"])
    except Exception as e:  # safetensors' own error, OSError, JSON or key errors, a state dict that does not fit
        log(f"the cached classifier at {path} is unreadable ({type(e).__name__}); training it again")
        return None
    return model, accuracy


def check_scorable(info: DataInfo) -> None:
    """A TinydiffError for data without two classes or more: the classifier whose features FID uses needs labels."""
    if not info.labelled:
        raise TinydiffError(f"{info.dataset} has no class subfolders, so there is no classifier to score with: FID "
                            f"and class accuracy here are measured in a classifier's feature space, which needs labels; "
                            f"sort the images into class subfolders to score them")
    if info.num_classes < 2:
        raise TinydiffError(f"{info.dataset} has one class ({info.class_names[0]}): a classifier has nothing to tell "
                            f"apart, so its features would be random and FID meaningless; scoring needs two class "
                            f"subfolders or more")


def get_classifier(data: Dataset, data_dir: str | Path | None = None, device="cpu", log=print) -> TrainedClassifier:
    """Load the cached classifier for `data`, training and caching it first if there is none. An unlabelled folder
    has no classes to learn: a TinydiffError says so."""
    check_scorable(data.info)
    path = classifier_path(data, data_dir)
    meta_path = path.with_suffix(".json")
    cached = _load_cached(path, meta_path, data, log) if path.exists() and meta_path.exists() else None
    if cached is not None:
        model, accuracy = cached
    else:
        log(f"training the {data.info.label} classifier used for FID and class accuracy (once; cached at {path})")
        model, accuracy = train_classifier(data.train, data.test, data.info.num_classes, log=log)
        write_safetensors(path, model.state_dict())
        write_text_atomic(meta_path, json.dumps({"dataset": data.info.dataset, "test_accuracy": accuracy,
                                                 "version": CLASSIFIER_VERSION}, indent=2))
        log(f"classifier test accuracy {accuracy:.4f}")
    return TrainedClassifier(model.to(device).eval(), accuracy, path)
