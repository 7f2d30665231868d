import pytest
import torch

from tinydiff_cli.guidance import guided_denoiser
from tinydiff_cli.objectives import predict_x0_from_eps
from tinydiff_cli.samplers import ddim_sample, ddim_sigma, ddim_timesteps, ddpm_sample
from tinydiff_cli.schedules import make_betas, make_schedule


def dummy_denoiser(schedule):
    """A fixed, smooth, deterministic 'model': eps_hat = 0.5 * tanh(x_t) + 0.001 * t."""
    def denoise(x, t):
        eps = 0.5 * torch.tanh(x) + 0.001 * t.view(-1, 1, 1, 1)
        return predict_x0_from_eps(schedule, x, t, eps), eps
    return denoise


def test_ddim_timesteps_come_from_the_list_and_end_at_zero():
    assert ddim_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(50, 50) == list(range(49, -1, -1))
    steps = ddim_timesteps(1000, 333)
    assert len(set(steps)) == 333 and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


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
    ddpm = ddpm_sample(denoise, x.clone(), sch, generator=torch.Generator().manual_seed(1))
    ddim = ddim_sample(denoise, x.clone(), sch, 100, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_ddim_eta_0_is_deterministic_and_one_step_lands_on_x0_prediction():
    sch = make_schedule("linear", 1000)
    denoise = dummy_denoiser(sch)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(denoise, x.clone(), sch, 10, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(denoise, x.clone(), sch, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    one = ddim_sample(denoise, x.clone(), sch, 1)
    x0_hat, _ = denoise(x, torch.full((2,), 999))
    torch.testing.assert_close(one, x0_hat)


def exact_gaussian_denoiser(sch, mu, s, batch):
    class ExactGaussianDenoiser(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, labels):
            ab = sch.alpha_bar[t].view(-1, 1, 1, 1)
            return mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x - ab.sqrt() * mu)  # an x0-objective model

    return guided_denoiser(ExactGaussianDenoiser(), sch, "x0", torch.zeros(batch, dtype=torch.long), null_class=10,
                           clip_x0=False)


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
        out = ddpm_sample(denoise, x, sch, generator=g)
    elif sampler == "ddim100":
        out = ddim_sample(denoise, x, sch, 100, generator=g)
    else:
        out = ddim_sample(denoise, x, sch, 200, eta=0.5, generator=g)
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s, rel=0.03)


def test_ddim_error_shrinks_as_steps_grow():
    """With the exact denoiser, DDIM's only error is discretisation: it must fall as steps are added."""
    sch = make_schedule("cosine", 1000)
    denoise = exact_gaussian_denoiser(sch, 0.3, 0.5, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    errors = [abs(ddim_sample(denoise, x.clone(), sch, steps).std().item() - 0.5) for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01


def test_callback_sees_every_step():
    sch = make_schedule("linear", 50)
    seen = []
    ddim_sample(dummy_denoiser(sch), torch.zeros(1, 1, 28, 28), sch, 7, callback=lambda info: seen.append(info["t"]))
    assert seen == ddim_timesteps(50, 7)
