import pytest
import torch

from tinydiff_cli.config import available_presets, load_config
from tinydiff_cli.models import build_model
from tinydiff_cli.models.unet import UNet, timestep_embedding


@pytest.mark.parametrize("kwargs", [
    dict(base_channels=8, channel_mults=(1, 2), attn_resolutions=(14,), groups=4, heads=2),
    dict(base_channels=16, channel_mults=(1, 2, 4), attn_resolutions=(7,), num_res_blocks=2),
    dict(base_channels=8, channel_mults=(1,), attn_resolutions=(), groups=4),
])
def test_unet_output_shape_equals_input_shape(kwargs):
    model = UNet(**kwargs)
    x = torch.randn(3, 1, 28, 28)
    out = model(x, torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == x.shape


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_builds_a_working_model(preset):
    cfg = load_config(preset)
    shape = (cfg.data.channels or 1, cfg.data.image_size or 28, cfg.data.image_size or 28)
    model = build_model(cfg.model, shape[1], shape[0])
    assert model(torch.randn(2, *shape), torch.tensor([3, 4]), None).shape == (2, *shape)


def test_output_layer_starts_at_zero_and_learns_class_and_time():
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), attn_resolutions=(), groups=4)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    assert torch.all(model(x, t, torch.tensor([1, 2])) == 0)  # zero-initialised output conv
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(x, t, torch.tensor([1, 2])).sub(1).pow(2).mean().backward()
        opt.step()
    assert model.class_emb.weight.grad[1].abs().sum() > 0
    a = model(x, t, torch.tensor([1, 1]))
    b = model(x, t, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)  # the class changes the output


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # frequencies 1 and 1/100 for dim 4: [cos(1), cos(0.01), sin(1), sin(0.01)]
    torch.testing.assert_close(emb[1], torch.tensor([0.5403023, 0.99995, 0.8414710, 0.0099998]), rtol=1e-4, atol=1e-5)
