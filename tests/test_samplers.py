"""The samplers against formulas: grids, DDPM's posterior, and exact Gaussian data under every formulation."""
import math

import pytest
import torch

from tinydiff_cli.diffusion.formulations import EDM, DiscreteVP, Flow, make_formulation
from tinydiff_cli.diffusion.guidance import guided_denoiser
from tinydiff_cli.diffusion.sampling import (SAMPLERS, ancestral_step, ddim_sample, ddpm_sample, evaluation_sigmas,
                                             heun_sample, sampler_label, sampler_options, sampling_sigmas)
from tinydiff_cli.diffusion.schedules import make_betas, make_schedule


def dummy_denoiser(x, sigma):
    """A fixed, smooth, deterministic 'model': x_0 = 0.5 * tanh(x / sqrt(1 + sigma^2)) + 0.001 * sigma."""
    return 0.5 * torch.tanh(x / (1 + sigma**2).sqrt()) + 0.001 * sigma


def test_discrete_timesteps_are_trailing_and_end_near_zero():
    form = make_formulation("eps", timesteps=1000)
    assert form.timesteps(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert form.timesteps(1) == [999]
    assert make_formulation("eps", timesteps=50).timesteps(50) == list(range(49, -1, -1))
    steps = form.timesteps(333)
    assert len(set(steps)) == 333 and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError):
        form.timesteps(0)


def test_one_grid_function_for_every_sampler():
    form = make_formulation("eps", timesteps=50)
    sigmas = make_schedule("linear", 50).sigmas
    grid = sampling_sigmas(form, "ddim", 10)
    torch.testing.assert_close(grid, torch.cat([sigmas[form.timesteps(10)], torch.zeros(1)]))
    assert len(sampling_sigmas(form, "ddim")) == 51  # no steps: all T, then 0
    torch.testing.assert_close(sampling_sigmas(form, "ddpm"), sampling_sigmas(form, "ddpm", 50))
    with pytest.raises(ValueError, match="ddpm always runs all T=50 steps"):
        sampling_sigmas(form, "ddpm", 10)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of ddpm, ddim"):
        sampling_sigmas(form, "euler", 10)
    with pytest.raises(ValueError, match="discrete schedule, and this model is 'edm'"):
        sampling_sigmas(make_formulation("edm"), "ddpm")
    assert sampler_label("ddim", grid) == "DDIM-10"
    assert evaluation_sigmas("heun", grid).tolist() == grid[:-1].tolist() + grid[1:-1].tolist()  # 2N - 1 calls


def test_the_discrete_denoiser_calls_the_network_at_its_own_integer_t():
    form = make_formulation("v", schedule="cosine", timesteps=1000)
    t = torch.tensor([0, 1, 499, 998, 999])
    assert form.timestep(form.schedule.sigmas[t]).tolist() == t.tolist()  # exactly, not nearly
    between = (form.schedule.sigmas[10] * form.schedule.sigmas[11]).sqrt()  # halfway in log sigma
    assert form.timestep(between).item() == pytest.approx(10.5, abs=1e-4)


def test_edm_grid_is_karras_eq_5_and_flow_grid_is_uniform_in_t():
    edm = EDM()
    grid = edm.sigmas(18).double()
    i = torch.arange(18, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(grid[:-1], expected, rtol=1e-6, atol=0)
    assert grid[-1] == 0
    flow = Flow()
    t = flow.t_of(flow.sigmas(4).double())
    torch.testing.assert_close(t, torch.tensor([0.999, 0.74925, 0.4995, 0.24975, 0.0], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)


def test_every_sampler_shares_the_leading_signature():
    import inspect

    for name, sampler in SAMPLERS.items():
        params = list(inspect.signature(sampler).parameters.values())
        assert [p.name for p in params[:3]] == ["denoise", "x", "sigmas"], name
        rest = {p.name: p for p in params[3:]}
        assert {"generator", "callback"} <= set(rest), name
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in rest.values()), name
    assert sampler_options("ddim", eta=0.5) == {"eta": 0.5}
    assert sampler_options("ddpm", eta=0.5) == {}  # DDPM has no eta
    assert sampler_options("ddim", eta=None) == {}


def test_ddim_eta_1_has_ddpm_posterior_variance():
    """DDIM's eq. 16 at eta = 1 is beta-tilde (Ho et al. eq. 7); in sigma it is divided by sqrt(alpha_bar_{t-1})."""
    betas = make_betas("linear", 1000)  # float64
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1000)
    sigma, sigma_next = ((1 - alpha_bar[t]) / alpha_bar[t]).sqrt(), ((1 - alpha_bar[t - 1]) / alpha_bar[t - 1]).sqrt()
    down, up = ancestral_step(sigma, sigma_next, 1.0)
    beta_tilde = betas[t] * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t])
    torch.testing.assert_close(up.pow(2) * alpha_bar[t - 1], beta_tilde, rtol=1e-10, atol=0)
    torch.testing.assert_close(down**2 + up**2, sigma_next**2, rtol=1e-12, atol=0)
    assert ancestral_step(sigma[5], sigma_next[5], 0.0)[1].item() == 0.0


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddpm_is_ho_et_al_algorithm_2(name):
    """DDPM over every timestep against Algorithm 2 written out in x_t with the posterior tables of eq. 7, the same
    model and the same noise draws."""
    sch = make_schedule(name, 100)
    form = DiscreteVP("x0", sch)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    got = ddpm_sample(dummy_denoiser, x_T * form.prior_std(), sampling_sigmas(form, "ddpm"),
                      generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), x_T.double()
    for t in range(99, -1, -1):
        sigma = sch.sigmas[t].double()
        x0 = dummy_denoiser(x * (1 + sigma**2).sqrt(), sigma)  # the same D, at x = x_t / sqrt(alpha_bar)
        mean = sch.posterior_mean_coef_x0[t].double() * x0 + sch.posterior_mean_coef_xt[t].double() * x
        x = mean + sch.posterior_variance[t].double().sqrt() * torch.randn(x.shape, generator=g).double() if t else mean
    torch.testing.assert_close(got.double(), x, atol=2e-4, rtol=1e-4)


def test_ddim_eta_0_is_deterministic_and_one_step_lands_on_x0_prediction():
    form = make_formulation("eps")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * form.prior_std()
    grid = sampling_sigmas(form, "ddim", 10)
    a = ddim_sample(dummy_denoiser, x.clone(), grid, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(dummy_denoiser, x.clone(), grid, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    one = sampling_sigmas(form, "ddim", 1)
    torch.testing.assert_close(ddim_sample(dummy_denoiser, x.clone(), one), dummy_denoiser(x, one[0]))


def sigma_of_time_input(form, c_noise):
    """Invert each formulation's c_noise, so a test 'network' knows the sigma it is called at."""
    if isinstance(form, DiscreteVP):
        return form.schedule.sigmas[c_noise.round().long()]
    if isinstance(form, EDM):
        return (c_noise / 250).exp()
    t = c_noise / 1000
    return t / (1 - t)


class ExactGaussianNetwork(torch.nn.Module):
    """For data x_0 ~ N(mu, s^2) per pixel, the exact posterior mean E[x_0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)
    at x = x_0 + sigma eps, returned as whatever the formulation's network outputs (its `output_for`)."""
    num_classes = 10

    def __init__(self, form, mu, s):
        super().__init__()
        self.form, self.mu, self.s = form, mu, s

    def forward(self, x_in, c_noise, labels):
        sigma = sigma_of_time_input(self.form, c_noise).view(-1, 1, 1, 1).to(x_in.dtype)
        x = x_in / self.form.c_in(sigma)
        x0 = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        return self.form.output_for(x, sigma, x0)


def exact_gaussian_denoiser(form, mu, s, batch):
    return guided_denoiser(ExactGaussianNetwork(form, mu, s), form, torch.zeros(batch, dtype=torch.long),
                           null_class=10, clip_x0=False)


FORMULATIONS = {"eps-cosine": lambda: make_formulation("eps", schedule="cosine"),
                "v-linear": lambda: make_formulation("v"), "x0-cosine": lambda: make_formulation("x0", schedule="cosine"),
                "edm": lambda: make_formulation("edm"), "flow": lambda: make_formulation("flow")}


@pytest.mark.parametrize("form_name", list(FORMULATIONS))
@pytest.mark.parametrize("sampler", ["ddpm", "ddim100", "ddim200_eta05", "heun50", "dpm++2m50"])
def test_samplers_with_the_exact_denoiser_reproduce_gaussian_data(form_name, sampler):
    """With the exact denoiser every sampler must turn its formulation's starting noise into samples with mean mu and
    standard deviation s, which needs every step and every conversion right."""
    form = FORMULATIONS[form_name]()
    if sampler == "ddpm" and not form.discrete:
        pytest.skip("DDPM is for discrete schedules")
    if sampler.startswith("heun") and form_name.endswith("cosine"):
        pytest.skip("Heun's trapezoid over the cosine grid's first step (sigma 20291 -> 32) is known to be off")
    mu, s = 0.3, 0.5
    denoise = exact_gaussian_denoiser(form, mu, s, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * form.prior_std()
    g = torch.Generator().manual_seed(1)
    name, _, steps = sampler.partition("_")[0].rstrip("0123456789"), None, sampler.partition("_")[0]
    steps = int(steps[len(name):]) if steps[len(name):] else None
    out = SAMPLERS[name](denoise, x, sampling_sigmas(form, name, steps), generator=g,
                         **({"eta": 0.5} if "eta05" in sampler else {}))
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(s, rel=0.03)


def test_ddim_error_shrinks_as_steps_grow():
    """With the exact denoiser, DDIM's only error is discretisation: it must fall as steps are added."""
    form = make_formulation("eps", schedule="cosine")
    denoise = exact_gaussian_denoiser(form, 0.3, 0.5, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * form.prior_std()
    errors = [abs(ddim_sample(denoise, x.clone(), sampling_sigmas(form, "ddim", steps)).std().item() - 0.5)
              for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01


def test_callback_sees_every_step():
    form = make_formulation("eps", timesteps=50)
    seen = []
    grid = sampling_sigmas(form, "ddim", 7)
    ddim_sample(dummy_denoiser, torch.zeros(1, 1, 28, 28), grid, callback=lambda info: seen.append(info["sigma"]))
    assert seen == grid[:-1].tolist()


def gaussian_flow_reference(x, sigmas, mu, s):
    """For data x_0 ~ N(mu, s^2) the probability-flow ODE keeps z = (x - mu) / sqrt(s^2 + sigma^2) constant. Solving
    it exactly from sigmas[0] to the grid's last non-zero sigma, then taking the exact posterior mean there (the last
    step of every sampler here lands on the prediction), gives what a perfect ODE solver returns."""
    sigmas = sigmas.double()
    z = (x.double() - mu) / (s**2 + sigmas[0] ** 2).sqrt()
    last = sigmas[-2]
    return mu + s**2 / (s**2 + last**2) * z * (s**2 + last**2).sqrt()


def sampler_errors(form, names, step_counts, mu=0.3, s=0.5):
    denoise = exact_gaussian_denoiser(form, mu, s, 16)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * form.prior_std()

    def error(name, steps):
        grid = sampling_sigmas(form, name, steps)
        out = SAMPLERS[name](denoise, x.clone(), grid)
        return (out.double() - gaussian_flow_reference(x, grid, mu, s)).abs().max().item()

    return {name: {steps: error(name, steps) for steps in step_counts} for name in names}


def test_dpmpp_2m_beats_ddim_at_equal_steps_and_converges():
    err = sampler_errors(make_formulation("eps", schedule="cosine"), ["ddim", "dpm++2m"], (5, 10, 20, 50, 100, 200))
    dpm, ddim = err["dpm++2m"], err["ddim"]
    assert all(dpm[steps] < 0.5 * ddim[steps] for steps in (5, 10, 20, 50, 100)), (dpm, ddim)
    assert dpm[20] > dpm[50] > dpm[100] > dpm[200]
    assert dpm[50] / dpm[100] > 2.5 and dpm[100] / dpm[200] > 2.5  # second order: ~4x per halving of the step
    assert ddim[50] / ddim[100] < 2.5  # DDIM is first order: ~2x


@pytest.mark.parametrize("form_name", ["edm", "flow"])
def test_second_order_samplers_beat_ddim_on_continuous_grids(form_name):
    """On EDM's and flow's own grids, DPM-Solver++(2M) and Heun beat DDIM at equal steps and gain far more than
    DDIM's ~4x from 20 to 80 steps (second order: ~16x)."""
    err = sampler_errors(FORMULATIONS[form_name](), ["ddim", "dpm++2m", "heun"], (20, 40, 80))
    ddim = err["ddim"]
    for name in ("dpm++2m", "heun"):
        assert all(err[name][steps] < 0.5 * ddim[steps] for steps in ddim), (name, err)
        assert err[name][20] / err[name][80] > 6, (name, err)
    assert ddim[20] / ddim[80] < 5, ddim


def test_heun_calls_the_denoiser_2n_minus_1_times():
    calls = []
    grid = make_formulation("edm").sigmas(5)
    heun_sample(lambda x, sigma: calls.append(float(sigma)) or x * 0, torch.ones(1, 1, 4, 4), grid)
    # each step at its start, then (all but the last) at its end
    assert calls == [v for i in range(5) for v in grid[i:i + 2].tolist()][:-1] and len(calls) == 9
    assert math.isclose(calls[0], 80.0, rel_tol=1e-6)
