import math

import numpy as np
import pytest
import torch

from tinydiff_cli.diffusion.schedules import SCHEDULES, make_schedule


def test_linear_alpha_bar_T_matches_product_formula():
    schedule = make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    expected = np.prod(1 - betas)
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert schedule.betas[-1].item() == pytest.approx(0.02)
    assert schedule.alpha_bar[-1].item() == pytest.approx(expected, rel=1e-4)
    assert expected == pytest.approx(4.036e-5, rel=1e-3)  # the well-known DDPM end point


def test_cosine_matches_nichol_dhariwal_formula():
    T, s = 1000, 0.008
    schedule = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert schedule.alpha_bar[0].item() == pytest.approx(f(1) / f(0), rel=1e-6)
    assert schedule.alpha_bar[499].item() == pytest.approx(f(500) / f(0), rel=1e-5)
    assert schedule.alpha_bar[-2].item() == pytest.approx(f(T - 1) / f(0), rel=1e-3)
    assert schedule.betas.max().item() == pytest.approx(0.999)  # clipped at t = T-1
    assert schedule.alpha_bar[-1].item() < 1e-8


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_a_valid_noising_process(name):
    schedule = make_schedule(name, 1000)
    assert schedule.alpha_bar.dtype == torch.float32
    assert schedule.T == 1000
    assert schedule.alpha_bar[0] > 0.99 and schedule.alpha_bar[-1] < 1e-3
    assert torch.all(schedule.alpha_bar[1:] < schedule.alpha_bar[:-1])
    assert torch.all((schedule.betas > 0) & (schedule.betas <= 0.999))
    assert torch.all(schedule.log_snr[1:] < schedule.log_snr[:-1])


def test_sigmoid_matches_chen_2023():
    T = 1000
    schedule = make_schedule("sigmoid", T)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    gamma = lambda t: (sig(3) - sig(6 * t - 3)) / (sig(3) - sig(-3))  # noqa: E731
    assert schedule.alpha_bar[499].item() == pytest.approx(gamma(0.5), rel=1e-5)


def test_posterior_quantities_follow_ddpm_eq_7():
    sch = make_schedule("linear", 1000)
    t = 500
    ab, ab_prev, beta = sch.alpha_bar[t].double(), sch.alpha_bar[t - 1].double(), sch.betas[t].double()
    assert sch.alpha_bar_prev[t].item() == pytest.approx(ab_prev.item())
    assert sch.alpha_bar_prev[0].item() == 1.0
    assert sch.posterior_variance[t].item() == pytest.approx((beta * (1 - ab_prev) / (1 - ab)).item(), rel=1e-5)
    assert sch.posterior_variance[0].item() == 0.0
    assert sch.posterior_mean_coef_x0[t].item() == pytest.approx((beta * ab_prev.sqrt() / (1 - ab)).item(), rel=1e-5)
    assert sch.log_snr[t].item() == pytest.approx(math.log(ab / (1 - ab)), rel=1e-5)


def test_linear_scales_with_T_and_unknown_names_fail():
    short = make_schedule("linear", 100)
    assert short.betas[-1].item() == pytest.approx(0.2)
    shortest = make_schedule("linear", 20)  # the end point would be 1.0: clipped, so everything stays finite
    assert shortest.betas.max().item() == pytest.approx(0.999)
    assert torch.isfinite(shortest.log_snr).all() and shortest.alpha_bar[-1] > 0
    with pytest.raises(ValueError, match="cosine"):
        make_schedule("quadratic", 10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_sigmas_are_the_noise_to_signal_ratio(name):
    from tinydiff_cli.diffusion.schedules import make_betas

    alpha_bar = torch.cumprod(1 - make_betas(name, 1000), 0)  # float64
    schedule = make_schedule(name, 1000)
    torch.testing.assert_close(schedule.sigmas.double(), ((1 - alpha_bar) / alpha_bar).sqrt(), rtol=1e-5, atol=0)
    assert (schedule.sigmas.diff() > 0).all()  # increasing in t: the denoiser's timestep lookup relies on it
