"""What the backbones are configured with, beside them: `ModelConfig` (the config's model section), which settings
each backbone reads, the checks of those settings at an image size, and how the presets' 28x28 settings carry over
to other sizes."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """Settings of both backbones; each reads its own (the shared ones are type, dropout, heads)."""

    type: Literal["unet", "dit"] = "unet"
    dropout: float = 0.0
    heads: int = 4
    guidance_input: bool = False  # takes the guidance weight w as an input (set by `tinydiff distill`)
    # unet
    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=lambda: [7])
    groups: int = 8
    # dit
    patch_size: int = 4
    hidden_size: int = 128
    depth: int = 6
    mlp_ratio: float = 4.0


# The settings only one backbone reads (see ModelConfig); the other's are left out where a person reads the config.
BACKBONE_KEYS = {"unet": ("base_channels", "channel_mults", "num_res_blocks", "attn_resolutions", "groups"),
                 "dit": ("patch_size", "hidden_size", "depth", "mlp_ratio")}


def model_checks(m: ModelConfig, image_size: int) -> list[tuple[bool, str]]:
    """(condition, message) pairs for the settings the chosen backbone reads."""
    if m.type == "dit":
        return [
            (m.patch_size >= 1 and image_size % m.patch_size == 0,
             f"model.patch_size must divide the image size {image_size} ({_or(_divisors(image_size)[1:-1] or [1])} "
             f"for {image_size}x{image_size}), got {m.patch_size}"),
            (m.hidden_size > 0 and m.hidden_size % 4 == 0, "model.hidden_size must be a positive multiple of 4"),
            (m.heads >= 1 and m.hidden_size % m.heads == 0, f"model.heads must divide model.hidden_size ({m.hidden_size})"),
            (1 <= m.depth <= 256, "model.depth must be between 1 and 256"),
            (m.hidden_size <= 16384, "model.hidden_size must be at most 16384"),
            (m.mlp_ratio > 0, "model.mlp_ratio must be positive"),
        ]
    return [
        (m.groups >= 1 and m.base_channels > 0 and m.base_channels % m.groups == 0,
         f"model.base_channels ({m.base_channels}) must be a positive multiple of model.groups ({m.groups})"),
        (len(m.channel_mults) >= 1 and all(c > 0 for c in m.channel_mults), "model.channel_mults must be positive integers"),
        (image_size % 2 ** (len(m.channel_mults) - 1) == 0,
         f"model.channel_mults has {len(m.channel_mults)} levels, but {image_size}x{image_size} images halve cleanly only "
         f"{_halvings(image_size)} times; use at most {_halvings(image_size) + 1} levels, or a size that halves "
         f"{len(m.channel_mults) - 1} times (--set data.image_size={_next_multiple(image_size, 2 ** (len(m.channel_mults) - 1))})"),
        (1 <= m.num_res_blocks <= 32, "model.num_res_blocks must be between 1 and 32"),
        (m.base_channels * max(m.channel_mults, default=1) <= 16384, "model.base_channels times the largest of "
         "model.channel_mults must be at most 16384"),
        (m.heads >= 1 and all((m.base_channels * c) % m.heads == 0 for c in m.channel_mults),
         "model.heads must divide the channel count of every level"),
    ]


DESIGN_SIZE = 28  # the image size the presets' attn_resolutions and patch_size are written for


def unet_resolutions(m: ModelConfig, image_size: int) -> list[int]:
    """The side of each UNet level: the image size, halved once per level after the first."""
    return [image_size // 2 ** i for i in range(len(m.channel_mults))]


def adapt_to_image_size(m: ModelConfig, image_size: int) -> tuple[ModelConfig, list[str]]:
    """The backbone settings for `image_size`, and a line for each one changed. The presets are written for 28x28;
    for other sizes the UNet's attention goes to the level nearest (in log scale) to each resolution it names (7 at
    28 -> 8 at 32, 16 at 64), and the DiT's patch to the divisor of the size nearest to the one it names (ties: the
    larger, fewer tokens). Sizes the backbone cannot take are left to `model_checks` to refuse, with advice."""
    notes = []
    if image_size == DESIGN_SIZE:
        return m, notes
    if m.type == "unet":
        if image_size % 2 ** (len(m.channel_mults) - 1):
            return m, notes
        levels = unet_resolutions(m, image_size)
        adapted = sorted({min(levels, key=lambda r: (abs(math.log(r / a)), r)) for a in m.attn_resolutions if a > 0},
                         reverse=True)
        if adapted != sorted(set(m.attn_resolutions), reverse=True) and not set(m.attn_resolutions) <= set(levels):
            notes.append(f"model.attn_resolutions {m.attn_resolutions} -> {adapted} (the UNet's levels at "
                         f"{image_size}x{image_size} are {', '.join(map(str, levels))})")
            m = dataclasses.replace(m, attn_resolutions=adapted)
    elif m.patch_size >= 1 and image_size % m.patch_size:
        candidates = _divisors(image_size)[1:-1] or [1]
        patch = min(candidates, key=lambda p: (abs(p - m.patch_size), -p))
        notes.append(f"model.patch_size {m.patch_size} -> {patch} ({m.patch_size} does not divide {image_size}; "
                     f"{(image_size // patch) ** 2} tokens)")
        m = dataclasses.replace(m, patch_size=patch)
    return m, notes


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _or(items: list[int]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _next_multiple(n: int, k: int) -> int:
    return -(-n // k) * k


def _halvings(n: int) -> int:
    count = 0
    while n % 2 == 0:
        n //= 2
        count += 1
    return count
