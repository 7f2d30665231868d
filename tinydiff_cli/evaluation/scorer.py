"""Scoring samples: FID in the domain classifier's feature space against the test split, the real-data
floor at the same N, class accuracy of conditional samples and the class histogram.

FID is biased upwards at small N, so every score carries its N and the floor (N real training images
against the same test split) is computed at that N: compare numbers only at equal N. A training split smaller than N
gives its floor at all of its images, and the score says so (`floor_n`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .classifier import TrainedClassifier
from ..data.datasets import Dataset, Split, from_npz_layout
from ..errors import TinydiffError
from .metrics import class_accuracy, class_histogram, fid_from_features


@dataclass
class Score:
    n: int
    fid: float
    fid_real_floor: float
    floor_n: int  # training images behind the floor: n, or the whole split when it has fewer
    class_accuracy: float | None  # None when no sample had a class label
    class_histogram: list[float]
    classifier_test_accuracy: float
    reference: str = "test split"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Scorer:
    """Holds the classifier, the test-split features and the training split (for floors), computed once."""

    def __init__(self, classifier: TrainedClassifier, data: Dataset):
        self.classifier, self.num_classes, self.shape = classifier, data.info.num_classes, data.info.shape
        self.test: Split = data.test
        self.train: Split = data.train
        self.test_features, _ = classifier.embed(self.test.images)
        self._floors: dict[tuple[int, int], float] = {}

    def real_floor(self, n: int, seed: int = 0) -> float:
        """FID of n random training images against the test split: the best a perfect generator could get at n."""
        if (n, seed) not in self._floors:
            idx = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))[:n]
            features, _ = self.classifier.embed(self.train.images[idx])
            self._floors[n, seed] = fid_from_features(features, self.test_features)
        return self._floors[n, seed]

    def score(self, images_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> Score:
        """images: uint8 (N, H, W, C) as in sample .npz files, or (N, H, W) for grey; labels: int64 (N,), the null
        class for unconditional ones."""
        images_uint8 = from_npz_layout(images_uint8)
        if tuple(images_uint8.shape[1:]) != self.shape:
            c, h, w = images_uint8.shape[1:]
            raise TinydiffError(f"the images are {h}x{w} with {c} channel(s); the dataset's are "
                                f"{self.shape[1]}x{self.shape[2]} with {self.shape[0]}")
        n = images_uint8.shape[0]
        if n < 2:
            raise ValueError("FID needs at least 2 samples")
        features, predicted = self.classifier.embed(images_uint8)
        accuracy = None
        if labels is not None:
            conditional = labels < self.num_classes
            if conditional.any():
                accuracy = class_accuracy(predicted[conditional], labels[conditional])
        return Score(n=n, fid=fid_from_features(features, self.test_features), fid_real_floor=self.real_floor(n),
                     floor_n=min(n, len(self.train)),
                     class_accuracy=accuracy, class_histogram=class_histogram(predicted, self.num_classes),
                     classifier_test_accuracy=self.classifier.test_accuracy)
