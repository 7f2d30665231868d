import math

import pytest
import torch

from tinydiff_cli.config import load_config
from tinydiff_cli.models import build_model
from tinydiff_cli.models.dit import DiT, sincos_2d
from tinydiff_cli.diffusion.loss import diffusion_loss
from tinydiff_cli.diffusion.formulations import make_formulation


@pytest.mark.parametrize("patch_size", [2, 4, 7])
def test_output_shape_equals_input_shape(patch_size):
    model = DiT(patch_size=patch_size, hidden_size=32, depth=2, heads=2)
    x = torch.randn(3, 1, 28, 28)
    assert model(x, torch.tensor([0, 500, 999]), torch.tensor([0, 9, 10])).shape == x.shape


def test_adaln_zero_blocks_are_identity_and_output_is_zero_at_init():
    torch.manual_seed(0)
    model = DiT(patch_size=4, hidden_size=32, depth=3, heads=2)
    x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([3, 700]), torch.tensor([1, 10])
    c = model.time_mlp(torch.randn(2, 256)) + model.class_emb(labels)
    tokens = model.patchify_tokens(x)
    for block in model.blocks:
        torch.testing.assert_close(block(tokens, c), tokens)
    assert torch.all(model(x, t, labels) == 0)


def test_position_embedding_values():
    dim, grid = 8, 4
    pe = sincos_2d(dim, grid)
    assert pe.shape == (16, 8)
    # token 0 is (row 0, col 0): every sin is 0 and every cos is 1
    torch.testing.assert_close(pe[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float32))
    # token 1 is (row 0, col 1): the column half holds sin/cos(1 * omega), omega = [1, 1/100]
    col = torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)])
    torch.testing.assert_close(pe[1], torch.cat([col, torch.tensor([0.0, 0, 1, 1])]))
    # token 4 is (row 1, col 0): now the row half moves
    torch.testing.assert_close(pe[4], torch.cat([torch.tensor([0.0, 0, 1, 1]), col]))


def test_unpatchify_inverts_patch_order():
    model = DiT(patch_size=7, hidden_size=16, depth=1, heads=2)
    image = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    patches = image.unfold(2, 7, 7).unfold(3, 7, 7)  # (1, 1, 4, 4, 7, 7): row-major grid of patches
    tokens = patches.reshape(1, 16, 49)  # channel-last per token is trivial with one channel
    torch.testing.assert_close(model.unpatchify(tokens), image)


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model(load_config("dit-small", ["model.depth=2", "model.hidden_size=64"]).model)
    form = make_formulation("x0")
    x0 = torch.zeros(8, 1, 28, 28) - 1
    x0[:, :, 8:20, 10:18] = 1  # one bright block: a tiny dataset to memorise
    labels = torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = diffusion_loss(model, form, x0, labels, min_snr_gamma=0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:5]) / 5


def test_dit_switchable_from_the_command_line_settings():
    cfg = load_config("unet-small", ["model.type=dit", "model.patch_size=7"])
    model = build_model(cfg.model)
    assert isinstance(model, DiT) and model.grid == 4
    from tinydiff_cli.errors import TinydiffError
    with pytest.raises(TinydiffError, match="patch_size must divide"):
        load_config("unet-small", ["model.type=dit", "model.patch_size=5"])
