"""Device auto-detection: cuda, then mps, then cpu; or the one the user forces."""
from __future__ import annotations

import torch

from ..errors import TinydiffError

DEVICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(requested: str = "auto") -> torch.device:
    name = requested.split(":")[0]
    if name not in DEVICES:
        raise TinydiffError(f"unknown device '{requested}'; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TinydiffError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if name == "mps" and not mps_available():
        raise TinydiffError("--device mps was asked for, but MPS is not available here; use --device auto or cpu")
    return torch.device(requested)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
