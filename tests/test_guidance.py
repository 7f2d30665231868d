import math

import pytest
import torch

from tinydiff_cli.diffusion.formulations import make_formulation
from tinydiff_cli.diffusion.guidance import cfg_mix, guided_denoiser, weight_in_interval
from tinydiff_cli.diffusion.schedules import make_betas


class LabelModel(torch.nn.Module):
    """Output depends on x, t and the label, so the conditional and unconditional passes differ."""
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels):
        self.calls.append(x.shape[0])
        return 0.3 * x + 0.01 * labels.view(-1, 1, 1, 1).float() + 0.0001 * t.view(-1, 1, 1, 1)


def setup(objective="v"):
    form = make_formulation(objective, schedule="cosine")
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if form.discrete:
        sigma = form.schedule.sigmas[torch.tensor([100, 300, 500, 700])]
    else:
        sigma = torch.tensor([0.1, 0.8, 3.0, 20.0])
    labels = torch.tensor([0, 3, 7, 9])
    return form, x, sigma, labels, LabelModel()


def network_x0(form, model, x, sigma, labels):
    """The unguided D(x; sigma), written out: the network at c_in x and c_noise, then to_x0."""
    s = sigma.view(-1, 1, 1, 1)
    return form.to_x0(x, s, model(form.c_in(s) * x, form.c_noise(sigma), labels))


def test_w0_equals_conditional_prediction_with_one_unbatched_pass():
    form, x, sigma, labels, model = setup()
    x0 = guided_denoiser(model, form, labels, null_class=10, w=0.0, clip_x0=False)(x, sigma)
    torch.testing.assert_close(x0, network_x0(form, model, x, sigma, labels))
    assert model.calls == [4, 4]
    # the discrete model is called at its own integer t
    seen = []
    guided_denoiser(lambda x_in, t, lab: seen.append(t) or x_in, form, labels, null_class=10)(x, sigma)
    assert seen[0].tolist() == [100, 300, 500, 700]


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "edm", "flow"])
def test_guidance_is_ho_salimans_eq_6_in_one_batched_pass(objective):
    form, x, sigma, labels, model = setup(objective)
    w = 2.5
    x0 = guided_denoiser(model, form, labels, null_class=10, w=w, clip_x0=False)(x, sigma)
    assert model.calls == [8]  # conditional + unconditional as one forward
    x0_c = network_x0(form, model, x, sigma, labels)
    x0_u = network_x0(form, model, x, sigma, torch.full_like(labels, 10))
    torch.testing.assert_close(x0, (1 + w) * x0_c - w * x0_u, rtol=1e-4, atol=1e-4)
    if objective == "eps":  # and in eps space, eps = (x - x_0) / sigma, as the paper writes it
        s = sigma.view(-1, 1, 1, 1)
        eps = lambda x0: (x - x0) / s  # noqa: E731
        torch.testing.assert_close(eps(x0), (1 + w) * eps(x0_c) - w * eps(x0_u), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("objective", ["v", "x0"])
def test_guided_x0_is_accurate_at_t_near_T(objective):
    """Mixing the network's output keeps the guided x_0 of v- and x0-models within float32 rounding of the float64
    result at t = T-1 of the cosine schedule, where a detour through eps would divide by sqrt(alpha_bar) ~ 5e-5."""
    form, x_t, _, labels, model = setup(objective)
    sigma = form.schedule.sigmas[999].expand(4)
    x = x_t * form.prior_std()  # x = x_t / sqrt(alpha_bar)
    w = 3.0
    x0 = guided_denoiser(model, form, labels, null_class=10, w=w, clip_x0=False)(x, sigma)
    ab = torch.cumprod(1 - make_betas("cosine", 1000), 0)[999]  # float64
    t = torch.full((4,), 999)
    out = (1 + w) * model(x_t, t, labels).double() - w * model(x_t, t, torch.full_like(labels, 10)).double()
    exact = ab.sqrt() * x_t.double() - (1 - ab).sqrt() * out if objective == "v" else out
    assert (x0.double() - exact).abs().max().item() < 1e-4


def test_unconditional_rows_skip_the_wasted_pass():
    form, x, sigma, labels, model = setup()
    null = torch.full_like(labels, 10)
    x0 = guided_denoiser(model, form, null, null_class=10, w=3.0, clip_x0=False)(x, sigma)
    assert model.calls == [4]  # one unbatched pass, not 8 rows
    torch.testing.assert_close(x0, network_x0(form, model, x, sigma, null))


def test_cfg_mix_convention():
    c, u = torch.tensor([1.0]), torch.tensor([3.0])
    assert cfg_mix(c, u, 0.0).item() == 1.0
    assert cfg_mix(c, u, 1.0).item() == -1.0


def test_clip_keeps_x0_in_the_data_range():
    form, x, sigma, labels, model = setup("eps")
    x0 = guided_denoiser(model, form, labels, null_class=10, w=1.0)(50 * x, sigma)
    unclipped = guided_denoiser(model, form, labels, null_class=10, w=1.0, clip_x0=False)(50 * x, sigma)
    assert x0.abs().max() <= 1.0 and unclipped.abs().max() > 1.0
    torch.testing.assert_close(x0, unclipped.clamp(-1, 1))


def test_guidance_interval_guides_only_at_low_noise_with_one_pass_elsewhere():
    form, x, _, labels, model = setup("eps")
    sig = form.schedule.sigmas
    max_sigma = sig[500].item()  # t <= 500 are inside (sigma grows with t)
    interval = guided_denoiser(model, form, labels, null_class=10, w=2.0, clip_x0=False, max_sigma=max_sigma)
    full = guided_denoiser(model, form, labels, null_class=10, w=2.0, clip_x0=False)
    plain = guided_denoiser(model, form, labels, null_class=10, w=0.0, clip_x0=False)
    low, high = sig[300], sig[700]
    model.calls.clear()
    torch.testing.assert_close(interval(x, high), plain(x, high))  # above the interval: the conditional prediction
    assert model.calls == [4, 4]  # one unbatched pass each
    torch.testing.assert_close(interval(x, low), full(x, low))
    mixed = sig[torch.tensor([300, 700, 100, 900])]  # rows at different sigma (distillation batches)
    x0 = interval(x, mixed)
    x0_full, x0_plain = full(x, mixed), plain(x, mixed)
    torch.testing.assert_close(x0[[0, 2]], x0_full[[0, 2]])
    torch.testing.assert_close(x0[[1, 3]], x0_plain[[1, 3]])
    assert not torch.allclose(x0_full, x0_plain)  # the weight matters here, so the rows above say something


def test_weight_in_interval_keeps_per_row_weights():
    w = torch.tensor([1.0, 2.0, 3.0])
    assert weight_in_interval(torch.tensor([0.1, 0.2, 3.0]), w, 3.4) is w
    assert weight_in_interval(torch.tensor([4.0, 50.0, 157.0]), w, 3.4) == 0.0
    torch.testing.assert_close(weight_in_interval(torch.tensor([0.1, 50.0, 3.0]), w, 3.4), torch.tensor([1.0, 0.0, 3.0]))
    assert weight_in_interval(torch.tensor([1e9]), 2.0, math.inf) == 2.0
