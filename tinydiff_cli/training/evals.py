"""What a training run measures between steps, outside its loop: the eval loss on the test split, the sample grid,
and sample quality (FID, class accuracy). Each reads the EMA pipeline and never touches the training state."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data.datasets import Split, to_model_range, to_uint8
from ..io.images import save_grid
from ..diffusion.loss import diffusion_loss
from ..sampling.pipeline import Pipeline, make_generator


@torch.no_grad()
def eval_loss(pipe: Pipeline, split: Split, *, n: int, min_snr_gamma: float, chunk: int = 500) -> float | None:
    """Mean loss of the pipeline's model on the first n images of `split`, with fixed noise levels and noise so that
    epochs are comparable; None when n is 0."""
    n = min(n, len(split))
    if n == 0:
        return None
    g = make_generator(12345, pipe.device)
    total = 0.0
    for start in range(0, n, chunk):
        x0 = to_model_range(split.images[start:min(start + chunk, n)])
        labels = split.labels[start:min(start + chunk, n)]
        loss = diffusion_loss(pipe.model, pipe.formulation, x0, labels, min_snr_gamma=min_snr_gamma, generator=g)
        total += loss.item() * x0.shape[0]
    return total / n


def save_sample_grid(pipe: Pipeline, path: Path, cfg: Config) -> Path | None:
    """train.sample_rows rows with one class per column, DDIM train.sample_steps at w = train.sample_w, from the
    same noise every time (seed train.seed); None when sample_rows is 0."""
    t = cfg.train
    if t.sample_rows == 0:
        return None
    images = pipe.sample(pipe.labels("all", t.sample_rows * pipe.grid_columns), sampler="ddim", steps=t.sample_steps,
                         w=t.sample_w, seed=t.seed)
    return save_grid(images, path, ncols=pipe.grid_columns)


class SampleQuality:
    """FID and class accuracy of train.eval_samples samples (DDIM train.sample_steps, w = train.sample_w).

    The scorer (and, on first use on a machine, the classifier) is built on the first call; building it must not
    shift the training RNG streams, so it runs inside fork_rng."""

    def __init__(self, cfg: Config, device: torch.device, log):
        self.cfg, self.device, self.log, self.scorer = cfg, device, log, None

    def __call__(self, pipe: Pipeline):
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            t, data = self.cfg.train, self.cfg.data
            if self.scorer is None:
                from ..evaluation.classifier import get_classifier
                from ..evaluation.scorer import Scorer

                from ..data.load import load_dataset_of

                dataset = load_dataset_of(data, trained_on=pipe.checkpoint.data if pipe.checkpoint else None)
                self.scorer = Scorer(get_classifier(dataset, data.data_dir, self.device, log=self.log), dataset)
            labels = pipe.labels("all", t.eval_samples)
            images = pipe.sample(labels, sampler="ddim", steps=t.sample_steps, w=t.sample_w, seed=t.seed + 1)
            return self.scorer.score(to_uint8(images), labels)
