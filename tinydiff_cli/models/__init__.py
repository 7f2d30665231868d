"""Backbones, built by name from a ModelConfig."""
from __future__ import annotations

from torch import nn

from .dit import DiT
from .unet import UNet

__all__ = ["BACKBONES", "DiT", "UNet", "build_model"]

BACKBONES = ("unet", "dit")


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
