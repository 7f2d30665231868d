"""Numeric precision and compilation of a model, for training and sampling.

`--precision fp32|bf16|fp16` runs the model's forward under torch.autocast (the weights, the optimizer and the EMA
stay float32, and the model's output is returned as float32, so losses and samplers never see half precision);
fp16 training scales the loss with a GradScaler. `auto` is bf16 on a GPU that supports it, else fp32. `--compile`
wraps the model in torch.compile.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import TinydiffError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without either, PyTorch emulates bfloat16 matmuls on a CPU, many times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` made concrete for the device; a precision the device cannot run well is refused with one line."""
    if name not in PRECISIONS:
        raise TinydiffError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if name == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise TinydiffError("--precision bf16: this CPU has no native bfloat16 (no AVX-512 BF16 or AMX), so PyTorch "
                            "would emulate it, many times slower than fp32; use --precision fp32 here")
    if name == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise TinydiffError("--precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    if name == "fp16" and device.type != "cuda":
        raise TinydiffError(f"--precision fp16 is for CUDA GPUs; on {device.type} use fp32")
    return name


class Autocast(nn.Module):
    """Runs the wrapped model under autocast and returns its output as float32. It holds no parameters of its own:
    `module` is the model, whose state dict is unchanged."""

    def __init__(self, module: nn.Module, precision: str):
        super().__init__()
        self.module, self.dtype = module, AUTOCAST_DTYPES[precision]

    @property
    def guidance_emb(self):  # what guidance.guided_denoiser looks for on a guidance-distilled student
        return getattr(self.module, "guidance_emb", None)

    def forward(self, *args, **kwargs):
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            return self.module(*args, **kwargs).float()


def prepare(model: nn.Module, precision: str, compile: bool = False) -> nn.Module:
    """The model as the forward should call it: under autocast for bf16/fp16, and compiled with --compile."""
    if precision in AUTOCAST_DTYPES:
        model = Autocast(model, precision)
    return torch.compile(model) if compile else model


def grad_scaler(precision: str, device: torch.device):
    """A GradScaler for fp16 (its range is too small for raw gradients), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
