"""A small UNet denoiser for 28x28 images (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021, sec. 3).

Resolutions halve per level with stride-2 convolutions (28 -> 14 -> 7), so no padding to 32 is needed.
Time and class enter every residual block through a scale-shift (FiLM) of the normalised activations.
The class embedding has one extra row, the learned null class used for classifier-free guidance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, sec. 3.5)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GuidanceEmbedding(nn.Module):
    """The guidance weight w as a network input, for guidance-distilled students (Meng et al. 2023, sec. 4.1, which
    embeds w like a timestep). The last layer starts at zero, so a student copied from its teacher starts out with the
    teacher's conditional output, whatever w (a warm start)."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), zero_module(nn.Linear(dim, dim)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(100 * w, self.freq_dim))  # w in [0, ~4] spread like timesteps 0..400


def condition_embedding(emb: torch.Tensor, guidance: GuidanceEmbedding | None, w: torch.Tensor | None) -> torch.Tensor:
    """Add the embedded w to the time + class embedding of a model that takes it (w None means w = 0)."""
    if guidance is None:
        return emb
    if w is None:
        w = torch.zeros(emb.shape[0], device=emb.device)
    return emb + guidance(torch.as_tensor(w, device=emb.device, dtype=emb.dtype).expand(emb.shape[0]))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # FiLM / scale-shift norm (Dhariwal & Nichol sec. 3)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, used at low resolution where it is cheap."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """UNet epsilon/x0/v predictor: forward(x_t, t, labels) -> tensor shaped like x_t.

    labels: int64 class ids in [0, num_classes]; num_classes itself is the null (unconditional) class.
    With guidance_input (a guidance-distilled student), forward(x_t, t, labels, w) also takes the guidance weight.
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, base_channels: int = 32,
                 channel_mults=(1, 2, 2), num_res_blocks: int = 1, attn_resolutions=(7,),
                 num_classes: int = 10, dropout: float = 0.0, groups: int = 8, heads: int = 4,
                 guidance_input: bool = False):
        super().__init__()
        self.num_classes = num_classes
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.guidance_emb = GuidanceEmbedding(emb_dim) if guidance_input else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin, cout):
            return ResBlock(cin, cout, emb_dim, groups, dropout)

        self.down = nn.ModuleList()
        skip_channels, ch, res = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers = [block(ch, base_channels * mult)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, groups, heads))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_channels.append(ch)
                res //= 2

        self.mid = nn.ModuleList([block(ch, ch), AttentionBlock(ch, groups, heads), block(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                layers = [block(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, groups, heads))
                if level > 0 and i == num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(nn.ModuleList(layers))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                w: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.class_emb(labels)
        emb = condition_embedding(emb, self.guidance_emb, w)
        h = self.stem(x)
        skips = [h]
        for layers in self.down:
            h = _apply(layers, h, emb)
            skips.append(h)
        h = _apply(self.mid, h, emb)
        for layers in self.up:
            h = _apply(layers, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def _apply(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        h = layer(h, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(h)
    return h
