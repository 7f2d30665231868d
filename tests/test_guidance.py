import torch

import pytest

from tinydiff_cli.guidance import cfg_mix, guided_denoiser, noise_level, weight_in_interval
from tinydiff_cli.parameterization import get_parameterization
from tinydiff_cli.schedules import make_betas, make_schedule


class LabelModel(torch.nn.Module):
    """Output depends on x, t and the label, so the conditional and unconditional passes differ."""
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels):
        self.calls.append(x.shape[0])
        return 0.3 * x + 0.01 * labels.view(-1, 1, 1, 1).float() + 0.0001 * t.view(-1, 1, 1, 1)


def setup():
    sch = make_schedule("cosine", 1000)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 300, 500, 700])
    labels = torch.tensor([0, 3, 7, 9])
    return sch, x, t, labels, LabelModel()


def test_w0_equals_conditional_prediction_with_one_unbatched_pass():
    sch, x, t, labels, model = setup()
    v = get_parameterization("v")
    x0, eps = guided_denoiser(model, sch, v, labels, null_class=10, w=0.0, clip_x0=False)(x, t)
    x0_ref, eps_ref = v.to_x0_eps(sch, x, t, model(x, t, labels))
    torch.testing.assert_close(x0, x0_ref)
    torch.testing.assert_close(eps, eps_ref)
    assert model.calls == [4, 4]


def test_guidance_is_ho_salimans_in_eps_space_in_one_batched_pass():
    for objective in ("eps", "x0", "v"):
        sch, x, t, labels, model = setup()
        param, w = get_parameterization(objective), 2.5
        x0, eps = guided_denoiser(model, sch, param, labels, null_class=10, w=w, clip_x0=False)(x, t)
        assert model.calls == [8]  # conditional + unconditional as one forward
        x0_c, eps_c = param.to_x0_eps(sch, x, t, model(x, t, labels))
        x0_u, eps_u = param.to_x0_eps(sch, x, t, model(x, t, torch.full_like(labels, 10)))
        torch.testing.assert_close(eps, (1 + w) * eps_c - w * eps_u, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x0, (1 + w) * x0_c - w * x0_u, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["v", "x0"])
def test_guided_x0_is_accurate_at_t_near_T(objective):
    """Mixing the network's output keeps the guided x_0 of v- and x0-models within float32 rounding of the float64
    result at t = T-1 of the cosine schedule, where the detour through eps (dividing by sqrt(alpha_bar) ~ 5e-5) lost
    about three digits."""
    sch, x, _, labels, model = setup()
    t = torch.full((4,), 999)
    param, w = get_parameterization(objective), 3.0
    x0, _ = guided_denoiser(model, sch, param, labels, null_class=10, w=w, clip_x0=False)(x, t)
    ab = torch.cumprod(1 - make_betas("cosine", 1000), 0)[999]  # float64
    out = (1 + w) * model(x, t, labels).double() - w * model(x, t, torch.full_like(labels, 10)).double()
    exact = ab.sqrt() * x.double() - (1 - ab).sqrt() * out if objective == "v" else out
    assert (x0.double() - exact).abs().max().item() < 1e-5


def test_unconditional_rows_skip_the_wasted_pass():
    sch, x, t, labels, model = setup()
    null = torch.full_like(labels, 10)
    x0, eps = guided_denoiser(model, sch, get_parameterization("v"), null, null_class=10, w=3.0, clip_x0=False)(x, t)
    assert model.calls == [4]  # one unbatched pass, not 8 rows
    x0_ref, _ = get_parameterization("v").to_x0_eps(sch, x, t, model(x, t, null))
    torch.testing.assert_close(x0, x0_ref)


def test_cfg_mix_convention():
    c, u = torch.tensor([1.0]), torch.tensor([3.0])
    assert cfg_mix(c, u, 0.0).item() == 1.0
    assert cfg_mix(c, u, 1.0).item() == -1.0


def test_clip_keeps_x0_in_range_and_eps_consistent():
    sch, x, t, labels, model = setup()
    x_big = 50 * x
    x0, eps = guided_denoiser(model, sch, get_parameterization("eps"), labels, null_class=10, w=1.0)(x_big, t)
    assert x0.abs().max() <= 1.0
    ab = sch.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_big, rtol=1e-4, atol=1e-3)


def test_noise_level_is_sigma_of_the_schedule():
    sch = make_schedule("linear", 1000)
    t = torch.tensor([0, 499, 999])
    ab = torch.cumprod(1 - make_betas("linear", 1000), 0)[t]  # float64
    torch.testing.assert_close(noise_level(sch, t).double(), ((1 - ab) / ab).sqrt(), rtol=1e-5, atol=0)
    assert 3.3 < noise_level(sch, torch.tensor([499])).item() < 3.5  # linear betas 1e-4..0.02: sigma_499 = 3.42


def test_guidance_interval_guides_only_at_low_noise_with_one_pass_elsewhere():
    sch, x, _, labels, model = setup()
    eps = get_parameterization("eps")
    max_sigma = noise_level(sch, torch.tensor([500])).item()  # t <= 500 are inside (sigma grows with t)
    interval = guided_denoiser(model, sch, eps, labels, null_class=10, w=2.0, clip_x0=False, max_sigma=max_sigma)
    full = guided_denoiser(model, sch, eps, labels, null_class=10, w=2.0, clip_x0=False)
    plain = guided_denoiser(model, sch, eps, labels, null_class=10, w=0.0, clip_x0=False)
    low, high = torch.full((4,), 300), torch.full((4,), 700)
    model.calls.clear()
    torch.testing.assert_close(interval(x, high), plain(x, high))  # above the interval: the conditional prediction
    assert model.calls == [4, 4]  # one unbatched pass each
    torch.testing.assert_close(interval(x, low), full(x, low))
    mixed = torch.tensor([300, 700, 100, 900])  # rows at different t (distillation batches): each row its own weight
    x0, _ = interval(x, mixed)
    x0_full, x0_plain = full(x, mixed)[0], plain(x, mixed)[0]
    torch.testing.assert_close(x0[[0, 2]], x0_full[[0, 2]])
    torch.testing.assert_close(x0[[1, 3]], x0_plain[[1, 3]])


def test_weight_in_interval_keeps_per_row_weights():
    sch = make_schedule("linear", 1000)
    w = torch.tensor([1.0, 2.0, 3.0])
    max_sigma = noise_level(sch, torch.tensor([500])).item()
    assert weight_in_interval(sch, torch.tensor([10, 20, 30]), w, max_sigma) is w
    assert weight_in_interval(sch, torch.tensor([900, 901, 902]), w, max_sigma) == 0.0
    torch.testing.assert_close(weight_in_interval(sch, torch.tensor([10, 900, 30]), w, max_sigma),
                               torch.tensor([1.0, 0.0, 3.0]))
