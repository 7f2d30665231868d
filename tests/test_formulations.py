"""Each formulation against its paper's formulas: the noising, the target, the conversion to x_0, the loss weight."""
import pytest
import torch
import torch.nn.functional as F

from tinydiff_cli.diffusion.formulations import EDM, OBJECTIVES, DiscreteVP, Flow, make_formulation, q_sample
from tinydiff_cli.diffusion.loss import diffusion_loss, draw_noise
from tinydiff_cli.diffusion.schedules import make_schedule


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(6, 1, 28, 28, generator=g)
    return x0, eps


def test_q_sample_is_eq_4(batch):
    x0, eps = batch
    schedule, t = make_schedule("cosine", 1000), torch.tensor([0, 10, 200, 500, 900, 990])
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(q_sample(schedule, x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_discrete_training_targets_are_the_papers(batch, target):
    x0, eps = batch
    form, t = make_formulation(target, schedule="cosine"), torch.tensor([1, 10, 200, 500, 900, 990])
    ab = form.schedule.alpha_bar[t].view(-1, 1, 1, 1)
    x_t, c_noise, got = form.training_example(x0, t, eps)
    expected = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[target]  # Salimans & Ho, sec. 4
    torch.testing.assert_close(got, expected)
    assert c_noise.tolist() == t.tolist()
    # the network's input is c_in(sigma) x with x = x_0 + sigma eps, and its target converts back to x_0
    sigma = form.schedule.sigmas[t].view(-1, 1, 1, 1)
    x = x0 + sigma * eps
    torch.testing.assert_close(form.c_in(sigma) * x, x_t, atol=1e-5, rtol=1e-4)
    keep = slice(1, 5)  # where eps -> x_0 (divides by sqrt(alpha_bar)) and x_0 -> eps are both well conditioned
    torch.testing.assert_close(form.to_x0(x[keep], sigma[keep], got[keep]), x0[keep], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_formulation_inverts_its_own_output(batch, objective):
    """to_x0(x, sigma, output_for(x, sigma, x0)) == x0, and output_for gives the training target at x = x0 + sigma eps."""
    x0, eps = batch
    form = make_formulation(objective)
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0, 40.0]).view(-1, 1, 1, 1)
    x = x0 + sigma * eps
    torch.testing.assert_close(form.to_x0(x, sigma, form.output_for(x, sigma, x0)), x0, atol=1e-4, rtol=1e-4)


def test_edm_preconditioning_is_table_1(batch):
    x0, eps = batch
    edm = EDM(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.1, 0.5, 2.0, 20.0, 80.0])
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(edm.c_skip(s), 0.25 / (s**2 + 0.25))
    torch.testing.assert_close(edm.c_out(s), s * 0.5 / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(edm.c_in(s), 1 / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(edm.c_noise(sigma), 1000 * sigma.log() / 4)
    x_in, c_noise, target = edm.training_example(x0, sigma, eps)
    x = x0 + s * eps
    torch.testing.assert_close(x_in, x / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(target, (x0 - 0.25 / (s**2 + 0.25) * x) / (s * 0.5 / (s**2 + 0.25).sqrt()))
    # the plain MSE of F is EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 times the x_0 error
    snr, k = edm.snr_and_mse_scale(sigma)
    torch.testing.assert_close(k, (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    assert edm.loss_weight(sigma, 0).tolist() == [1.0] * 6


def test_edm_and_flow_draw_their_papers_noise_levels():
    g = torch.Generator().manual_seed(0)
    log_sigma = EDM(p_mean=-1.2, p_std=1.2).draw_levels(200_000, "cpu", g).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01) and log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    t = Flow(t_mean=0.0, t_std=1.0).draw_levels(200_000, "cpu", g)
    logit = (t / (1 - t)).log()
    assert logit.mean().item() == pytest.approx(0.0, abs=0.01) and logit.std().item() == pytest.approx(1.0, abs=0.01)
    assert make_formulation("edm", noise_mean=-0.5, noise_std=0.8).p_mean == -0.5


def test_flow_is_a_straight_path_with_velocity_target(batch):
    x0, eps = batch
    flow = Flow()
    t = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.9, 0.99])
    s = t.view(-1, 1, 1, 1)
    x_t, c_noise, target = flow.training_example(x0, t, eps)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps)
    torch.testing.assert_close(target, eps - x0)
    torch.testing.assert_close(c_noise, 1000 * t)
    sigma = s / (1 - s)  # the same image in sigma: x_t = (x_0 + sigma eps) / (1 + sigma)
    torch.testing.assert_close(flow.c_in(sigma) * (x0 + sigma * eps), x_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flow.c_noise(sigma.flatten()), c_noise, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(flow.to_x0(x0 + sigma * eps, sigma, target), x0, atol=1e-4, rtol=1e-4)


def test_min_snr_weights_known_values():
    """Hang et al. 2023, eq. 9: min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1)
    for v (here at t where the linear schedule's SNR is known)."""
    form = {name: make_formulation(name) for name in ("eps", "x0", "v")}
    t = torch.tensor([400, 200, 50])
    snr = form["eps"].schedule.snr[t]
    gamma = 5.0
    torch.testing.assert_close(form["eps"].loss_weight(t, gamma), snr.clamp(max=gamma) / snr)
    torch.testing.assert_close(form["x0"].loss_weight(t, gamma), snr.clamp(max=gamma))
    torch.testing.assert_close(form["v"].loss_weight(t, gamma), snr.clamp(max=gamma) / (snr + 1))
    assert snr[0] < 5 < snr[2]  # the rows straddle gamma: both branches of the min are checked
    assert form["eps"].loss_weight(t, gamma)[:2].tolist() == [1.0, 1.0]  # below gamma: the plain eps loss
    torch.testing.assert_close(form["v"].loss_weight(t, 0.0), torch.ones(3))
    flow_t = torch.tensor([0.1, 0.5, 0.9])
    flow_snr = ((1 - flow_t) / flow_t) ** 2
    torch.testing.assert_close(Flow().loss_weight(flow_t, 1.0), flow_snr.clamp(max=1.0) * flow_t**2)


def test_min_snr_weighted_losses_agree_across_objectives(batch):
    """The same wrong x_0 guess costs the same weighted loss whichever target the model predicts (every formulation,
    at the same sigma: the weight is min(SNR, gamma) on the x_0 error)."""
    x0, eps = batch
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 9.0]).view(-1, 1, 1, 1)
    x = x0 + sigma * eps
    x0_guess = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    expected = (sigma.flatten() ** -2).clamp(max=5.0) * (x0_guess - x0).pow(2).mean(dim=(1, 2, 3))
    for objective in OBJECTIVES:
        form = make_formulation(objective)
        mse = (form.output_for(x, sigma, x0_guess) - form.output_for(x, sigma, x0)).pow(2).mean(dim=(1, 2, 3))
        if form.discrete:
            level = form.timestep(sigma.flatten())
            snr, k = form.snr_and_mse_scale(level.round().long())
            # at the schedule's own sigmas: the nearest t's tables are within 1% of these sigmas
            weight = snr.clamp(max=5.0) / k
        else:
            level = sigma.flatten() if objective == "edm" else Flow.t_of(sigma.flatten())
            weight = form.loss_weight(level, 5.0)
        torch.testing.assert_close(weight * mse, expected, rtol=0.05, atol=1e-6, msg=objective)


class AffineNet(torch.nn.Module):
    """A stand-in network with a known output: 0.5 x + 0.001 t + 0.01 label."""

    def forward(self, x, t, labels):
        return 0.5 * x + 0.001 * t.float().view(-1, 1, 1, 1) + 0.01 * labels.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_diffusion_loss_is_the_weighted_mse_of_the_target(batch, objective):
    x0, _ = batch
    form, labels, gamma = make_formulation(objective), torch.arange(6), 2.0
    level, eps = draw_noise(form, x0.shape, "cpu", torch.Generator().manual_seed(3))
    got = diffusion_loss(AffineNet(), form, x0, labels, min_snr_gamma=gamma, noise=(level, eps))
    x_in, c_noise, target = form.training_example(x0, level, eps)
    per_example = ((AffineNet()(x_in, c_noise, labels) - target) ** 2).mean(dim=(1, 2, 3))
    assert got.item() == pytest.approx((form.loss_weight(level, gamma) * per_example).mean().item(), rel=1e-6)
    # drawing the noise from the same generator inside gives the same loss
    again = diffusion_loss(AffineNet(), form, x0, labels, min_snr_gamma=gamma, generator=torch.Generator().manual_seed(3))
    assert again.item() == got.item()
    assert F.mse_loss(target, target).item() == 0  # the target is finite everywhere it is drawn


def test_unknown_objective_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of eps, x0, v, edm, flow"):
        make_formulation("score")
    with pytest.raises(ValueError, match="unknown target"):
        DiscreteVP("edm", make_schedule("linear", 100))
