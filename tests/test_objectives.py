import pytest
import torch

from tinydiff_cli.parameterization import (OBJECTIVES, PARAMETERIZATIONS, get_parameterization, predict_eps_from_x0,
                                           predict_x0_from_eps, q_sample)
from tinydiff_cli.schedules import make_schedule

V = PARAMETERIZATIONS["v"]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    schedule = make_schedule("cosine", 1000)
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 28, 28, generator=g)
    t = torch.tensor([0, 10, 200, 500, 900, 990])
    return schedule, x0, eps, t, q_sample(schedule, x0, t, eps)


def test_q_sample_is_eq_4(batch):
    schedule, x0, eps, t, x_t = batch
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


def test_conversions_round_trip(batch):
    schedule, x0, eps, t, x_t = batch
    v = V.target(schedule, x0, eps, t)
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)  # Salimans & Ho, sec. 4
    x0_from_v, eps_from_v = V.to_x0_eps(schedule, x_t, t, v)
    torch.testing.assert_close(x0_from_v, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_from_v, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(predict_eps_from_x0(schedule, x_t[2:], t[2:], x0[2:]), eps[2:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(predict_x0_from_eps(schedule, x_t[:5], t[:5], eps[:5]), x0[:5], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_parameterization_recovers_x0_and_eps_from_its_target(batch, objective):
    schedule, x0, eps, t, x_t = batch
    param = get_parameterization(objective)
    keep = slice(2, 5)  # mid-range t, where every conversion is well conditioned
    target = param.target(schedule, x0[keep], eps[keep], t[keep])
    x0_hat, eps_hat = param.to_x0_eps(schedule, x_t[keep], t[keep], target)
    torch.testing.assert_close(x0_hat, x0[keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps[keep], atol=1e-4, rtol=1e-4)


def test_min_snr_weights_known_values():
    snr = torch.tensor([0.5, 5.0, 50.0])
    weight = {name: p.loss_weight for name, p in PARAMETERIZATIONS.items()}
    torch.testing.assert_close(weight["eps"](snr, 5.0), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(weight["x0"](snr, 5.0), torch.tensor([0.5, 5.0, 5.0]))
    torch.testing.assert_close(weight["v"](snr, 5.0), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
    torch.testing.assert_close(weight["v"](snr, 0.0), torch.ones(3))


def test_min_snr_weighted_losses_agree_across_objectives(batch):
    """The same wrong x_0 guess costs the same weighted loss whichever target the model predicts."""
    schedule, x0, eps, t, x_t = batch
    keep = slice(1, 5)
    x0, eps, t, x_t = x0[keep], eps[keep], t[keep], x_t[keep]
    x0_guess = x0 + 0.1 * torch.randn_like(x0)
    eps_guess = predict_eps_from_x0(schedule, x_t, t, x0_guess)
    snr = schedule.snr[t]
    losses = {}
    for objective in OBJECTIVES:
        param = get_parameterization(objective)
        target = param.target(schedule, x0, eps, t)
        guess = param.target(schedule, x0_guess, eps_guess, t)
        mse = (guess - target).pow(2).mean(dim=(1, 2, 3))
        losses[objective] = param.loss_weight(snr, 5.0) * mse
    torch.testing.assert_close(losses["eps"], losses["x0"], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(losses["v"], losses["x0"], rtol=1e-3, atol=1e-6)


def test_unknown_objective_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of eps, x0, v"):
        get_parameterization("score")

