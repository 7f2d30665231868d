"""Backbones, built by name from a ModelConfig."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import init

from ..errors import TinydiffError
from .dit import DiT
from .unet import UNet

__all__ = ["BACKBONES", "DiT", "UNet", "build_model", "check_model_size", "parameter_count"]

BACKBONES = ("unet", "dit")
# 4 GB of float32 weights, 30x dit-base: more than any model for these datasets needs, so a config asking for more
# is damaged or hostile, and is refused before anything is allocated.
MAX_PARAMETERS = 1_000_000_000


def build_model(model_cfg, image_size: int = 28, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    if model_cfg.type == "unet":
        return UNet(image_size=image_size, in_channels=in_channels, base_channels=model_cfg.base_channels,
                    channel_mults=tuple(model_cfg.channel_mults), num_res_blocks=model_cfg.num_res_blocks,
                    attn_resolutions=tuple(model_cfg.attn_resolutions), num_classes=num_classes,
                    dropout=model_cfg.dropout, groups=model_cfg.groups, heads=model_cfg.heads,
                    guidance_input=model_cfg.guidance_input)
    if model_cfg.type == "dit":
        return DiT(image_size=image_size, in_channels=in_channels, patch_size=model_cfg.patch_size,
                   hidden_size=model_cfg.hidden_size, depth=model_cfg.depth, heads=model_cfg.heads,
                   mlp_ratio=model_cfg.mlp_ratio, num_classes=num_classes, dropout=model_cfg.dropout,
                   guidance_input=model_cfg.guidance_input)
    raise ValueError(f"unknown model type {model_cfg.type!r}; choose one of {', '.join(BACKBONES)}")


@contextmanager
def skipped_init():
    """torch.nn.init's in-place initialisers made no-ops: a meta tensor has no values to set, and initialising one
    goes through torch._refs, whose first call imports torch._dynamo (1.1 s of a 3.7 s `tinydiff sample` here)."""
    names = [name for name in dir(init) if name.endswith("_") and not name.startswith("_")]
    saved = {name: getattr(init, name) for name in names}
    try:
        for name in names:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def parameter_count(model_cfg, image_size: int = 28, in_channels: int = 1, num_classes: int = 10) -> int:
    """Counted on the meta device, where no memory is allocated, without initialising anything."""
    with torch.device("meta"), skipped_init():
        model = build_model(model_cfg, image_size, in_channels, num_classes)
    return sum(p.numel() for p in model.parameters())


def check_model_size(model_cfg, image_size: int = 28, in_channels: int = 1, num_classes: int = 10,
                     source: str = "the config") -> None:
    n = parameter_count(model_cfg, image_size, in_channels, num_classes)
    if n > MAX_PARAMETERS:
        raise TinydiffError(f"{source} asks for a {model_cfg.type} of {n / 1e6:,.0f}M parameters ({4 * n / 2**30:,.0f} GiB), "
                            f"more than tinydiff builds ({MAX_PARAMETERS // 10**6:,}M); it is damaged or not a tinydiff model")
