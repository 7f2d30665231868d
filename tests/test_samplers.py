import pytest
import torch

from tinydiff_cli.guidance import guided_denoiser
from tinydiff_cli.parameterization import X0Prediction, predict_x0_from_eps
from tinydiff_cli.samplers import (SAMPLERS, ddim_sample, ddim_sigma, ddpm_sample, sampler_label, sampler_options,
                                   sampler_timesteps, spaced_timesteps)
from tinydiff_cli.schedules import make_betas, make_schedule


def dummy_denoiser(schedule):
    """A fixed, smooth, deterministic 'model': eps_hat = 0.5 * tanh(x_t) + 0.001 * t."""
    def denoise(x, t):
        eps = 0.5 * torch.tanh(x) + 0.001 * t.view(-1, 1, 1, 1)
        return predict_x0_from_eps(schedule, x, t, eps), eps
    return denoise


def test_spaced_timesteps_are_trailing_and_end_near_zero():
    assert spaced_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert spaced_timesteps(1000, 1) == [999]
    assert spaced_timesteps(50, 50) == list(range(49, -1, -1))
    steps = spaced_timesteps(1000, 333)
    assert len(set(steps)) == 333 and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0)


def test_one_grid_function_for_every_sampler():
    assert sampler_timesteps("ddim", 1000, 10) == spaced_timesteps(1000, 10)
    assert sampler_timesteps("ddim", 50) == list(range(49, -1, -1))  # no steps: all T
    assert sampler_timesteps("ddpm", 50) == sampler_timesteps("ddpm", 50, 50) == list(range(49, -1, -1))
    with pytest.raises(ValueError, match="ddpm always runs all T=50 steps"):
        sampler_timesteps("ddpm", 50, 10)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of ddpm, ddim"):
        sampler_timesteps("euler", 50, 10)
    assert sampler_label("ddim", spaced_timesteps(1000, 10)) == "DDIM-10"


def test_every_sampler_shares_the_leading_signature():
    import inspect

    for name, sampler in SAMPLERS.items():
        params = list(inspect.signature(sampler).parameters.values())
        assert [p.name for p in params[:4]] == ["denoise", "x", "schedule", "timesteps"], name
        rest = {p.name: p for p in params[4:]}
        assert {"generator", "callback"} <= set(rest), name
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in rest.values()), name
    assert sampler_options("ddim", eta=0.5) == {"eta": 0.5}
    assert sampler_options("ddpm", eta=0.5) == {}  # DDPM has no eta
    assert sampler_options("ddim", eta=None) == {}


def test_ddpm_refuses_a_coarse_grid():
    sch = make_schedule("linear", 50)
    with pytest.raises(ValueError, match="every timestep"):
        ddpm_sample(dummy_denoiser(sch), torch.zeros(1, 1, 28, 28), sch, spaced_timesteps(50, 10))


def test_ddim_eta_1_has_ddpm_posterior_variance():
    betas = make_betas("linear", 1000)  # float64
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1000)
    sigma = ddim_sigma(alpha_bar[t], alpha_bar[t - 1], 1.0)
    beta_tilde = betas[t] * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t])  # DDPM eq. 7
    torch.testing.assert_close(sigma.pow(2), beta_tilde, rtol=1e-10, atol=0)
    stored = make_schedule("linear", 1000).posterior_variance[t]  # float32, as the samplers read it
    torch.testing.assert_close(stored.double(), beta_tilde, rtol=1e-3, atol=0)
    assert ddim_sigma(alpha_bar[5], alpha_bar[4], 0.0).item() == 0.0


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_eta_1_over_all_steps_equals_ddpm(name):
    sch = make_schedule(name, 100)
    denoise = dummy_denoiser(sch)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grid = sampler_timesteps("ddpm", 100)
    ddpm = ddpm_sample(denoise, x.clone(), sch, grid, generator=torch.Generator().manual_seed(1))
    ddim = ddim_sample(denoise, x.clone(), sch, grid, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_ddim_eta_0_is_deterministic_and_one_step_lands_on_x0_prediction():
    sch = make_schedule("linear", 1000)
    denoise = dummy_denoiser(sch)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(denoise, x.clone(), sch, spaced_timesteps(1000, 10), generator=torch.Generator().manual_seed(1))
    b = ddim_sample(denoise, x.clone(), sch, spaced_timesteps(1000, 10), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    one = ddim_sample(denoise, x.clone(), sch, [999])
    x0_hat, _ = denoise(x, torch.full((2,), 999))
    torch.testing.assert_close(one, x0_hat)


def exact_gaussian_denoiser(sch, mu, s, batch):
    class ExactGaussianDenoiser(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, labels):
            ab = sch.alpha_bar[t].view(-1, 1, 1, 1)
            return mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x - ab.sqrt() * mu)  # an x0-objective model

    return guided_denoiser(ExactGaussianDenoiser(), sch, X0Prediction(), torch.zeros(batch, dtype=torch.long),
                           null_class=10, clip_x0=False)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim100", "ddim200_eta05"])
def test_samplers_with_the_exact_denoiser_reproduce_gaussian_data(sampler):
    """Data x_0 ~ N(mu, s^2) per pixel has the exact posterior mean
    E[x_0 | x_t] = mu + sqrt(ab) s^2 / (ab s^2 + 1 - ab) * (x_t - sqrt(ab) mu); with it, every sampler must
    turn N(0, 1) noise into samples with mean mu and standard deviation s, which needs every step right."""
    sch = make_schedule("cosine", 1000)
    mu, s = 0.3, 0.5
    denoise = exact_gaussian_denoiser(sch, mu, s, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    if sampler == "ddpm":
        out = ddpm_sample(denoise, x, sch, sampler_timesteps("ddpm", 1000), generator=g)
    elif sampler == "ddim100":
        out = ddim_sample(denoise, x, sch, spaced_timesteps(1000, 100), generator=g)
    else:
        out = ddim_sample(denoise, x, sch, spaced_timesteps(1000, 200), eta=0.5, generator=g)
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s, rel=0.03)


def test_ddim_error_shrinks_as_steps_grow():
    """With the exact denoiser, DDIM's only error is discretisation: it must fall as steps are added."""
    sch = make_schedule("cosine", 1000)
    denoise = exact_gaussian_denoiser(sch, 0.3, 0.5, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    errors = [abs(ddim_sample(denoise, x.clone(), sch, spaced_timesteps(1000, steps)).std().item() - 0.5)
              for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01


def test_callback_sees_every_step():
    sch = make_schedule("linear", 50)
    seen = []
    ddim_sample(dummy_denoiser(sch), torch.zeros(1, 1, 28, 28), sch, spaced_timesteps(50, 7),
                callback=lambda info: seen.append(info["t"]))
    assert seen == spaced_timesteps(50, 7)


def gaussian_flow_reference(sch, x, mu, s, t_last):
    """For data x_0 ~ N(mu, s^2) the probability-flow ODE keeps z = (x_t - a_t mu) / sqrt(a_t^2 s^2 + sigma_t^2)
    constant. Solving it exactly from t = T-1 to the grid's last t, then taking the exact posterior mean there (the
    last step of DDIM and DPM-Solver++ both land on the prediction), gives what a perfect ODE solver returns."""
    def coefficients(t):
        ab = sch.alpha_bar[t].double()
        return ab.sqrt(), (1 - ab).sqrt()

    a_T, sigma_T = coefficients(sch.T - 1)
    z = (x.double() - a_T * mu) / (a_T**2 * s**2 + sigma_T**2).sqrt()
    a, sigma = coefficients(t_last)
    return mu + s * z * a * s / (a**2 * s**2 + sigma**2).sqrt()


def test_dpmpp_2m_beats_ddim_at_equal_steps_and_converges():
    sch = make_schedule("cosine", 1000)
    mu, s = 0.3, 0.5
    denoise = exact_gaussian_denoiser(sch, mu, s, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def error(name, steps):
        grid = sampler_timesteps(name, 1000, steps)
        out = SAMPLERS[name](denoise, x.clone(), sch, grid)
        return (out.double() - gaussian_flow_reference(sch, x, mu, s, grid[-1])).abs().max().item()

    dpm = {steps: error("dpm++2m", steps) for steps in (5, 10, 20, 50, 100, 200)}
    ddim = {steps: error("ddim", steps) for steps in (5, 10, 20, 50, 100)}
    assert all(dpm[steps] < 0.5 * ddim[steps] for steps in ddim), (dpm, ddim)
    assert dpm[20] > dpm[50] > dpm[100] > dpm[200]
    assert dpm[50] / dpm[100] > 2.5 and dpm[100] / dpm[200] > 2.5  # second order: ~4x per halving of the step
    assert ddim[50] / ddim[100] < 2.5  # DDIM is first order: ~2x
