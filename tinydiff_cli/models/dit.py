"""DiT: a Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into p x p patches (p = 2, 4 or 7 for 28x28), embedded as tokens with a fixed 2-D sin-cos
position embedding, passed through transformer blocks conditioned by adaLN-Zero on time + class, and put
back together by a final adaLN layer. The class embedding has one extra row, the null class for guidance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import GuidanceEmbedding, condition_embedding, timestep_embedding


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, dim): [sin(pos * omega), cos(pos * omega)], omega_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size^2, dim) fixed position embedding, tokens in row-major order; the first half of each vector
    encodes the column, the second half the row (as in MAE and DiT)."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose LayerNorm shift/scale and residual gates come from the condition
    (adaLN-Zero, Peebles & Xie sec. 3.2); with the modulation zeroed, the block is the identity."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """DiT denoiser: forward(x_t, t, labels) -> tensor shaped like x_t; labels == num_classes is the null class.
    With guidance_input (a guidance-distilled student), forward(x_t, t, labels, w) also takes the guidance weight."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, patch_size: int = 4, hidden_size: int = 128,
                 depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 10, dropout: float = 0.0,
                 guidance_input: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {image_size}")
        self.num_classes, self.patch_size, self.in_channels = num_classes, patch_size, in_channels
        self.grid = image_size // patch_size
        self.time_freq_dim = 256
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_freq_dim, hidden_size), nn.SiLU(),
                                      nn.Linear(hidden_size, hidden_size))
        self.class_emb = nn.Embedding(num_classes + 1, hidden_size)
        self.guidance_emb = GuidanceEmbedding(hidden_size) if guidance_input else None
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As in DiT's models.py: xavier linears, N(0, 0.02) time MLP, and adaLN-Zero: every block's
        modulation and the output layer start at zero, so the network starts as the identity on tokens
        and predicts 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        # DiT draws the label table from N(0, 0.02) and trains for 400k steps. At a CPU budget of a few thousand
        # steps that leaves the class ~2% of the conditioning vector: after 600 MNIST steps the samples' class
        # accuracy was at chance (9%); with N(0, 1), nn.Embedding's default and the UNet's, it was 33%.
        nn.init.normal_(self.class_emb.weight, std=1.0)
        for layer in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        if self.guidance_emb is not None:  # see GuidanceEmbedding: the student starts as its teacher
            nn.init.zeros_(self.guidance_emb.mlp[-1].weight)
            nn.init.zeros_(self.guidance_emb.mlp[-1].bias)
        for layer in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, grid^2, hidden)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid^2, p*p*C) -> (B, C, grid*p, grid*p)."""
        B, p, g, C = tokens.shape[0], self.patch_size, self.grid, self.in_channels
        x = tokens.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                w: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        c = self.time_mlp(timestep_embedding(t, self.time_freq_dim)) + self.class_emb(labels)
        c = condition_embedding(c, self.guidance_emb, w)
        h = self.patchify_tokens(x)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))

