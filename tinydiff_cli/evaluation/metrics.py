"""Sample-quality numbers: Fréchet distance between feature sets, class accuracy, class histogram."""
from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = features.double()
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative
    eigenvalues from round-off are clipped to 0)."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Heusel et al. 2017, eq. 6; Dowson & Landau 1982).

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner matrix is symmetric PSD,
    so `eigh` gives it stably in float64, without the complex round-off of a general sqrtm.
    """
    mu1, mu2, sigma1, sigma2 = (a.double() for a in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(d2.item(), 0.0)


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).double().mean().item()


def class_histogram(predicted: torch.Tensor, num_classes: int = 10) -> list[float]:
    """Fraction of samples the classifier assigns to each class."""
    counts = torch.bincount(predicted, minlength=num_classes).double()
    return (counts / counts.sum()).tolist()
