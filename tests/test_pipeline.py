"""Pipeline: loading, the facts it holds, and drawing through the sampler registry."""
import math
from dataclasses import replace

import pytest
import torch

from tinydiff_cli.io.checkpoint import DataInfo
from tinydiff_cli.config import Config, TrainConfig
from tinydiff_cli.sampling.pipeline import Pipeline, labels_for
from tinydiff_cli.sampling.plan import SamplingRequest, plan_sampling


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_checkpoint(tiny_run[0])


def test_holds_what_sampling_needs(pipe, tiny_run):
    assert pipe.T == 50 and pipe.schedule.T == 50
    assert pipe.formulation.name == "eps" and pipe.formulation.discrete
    assert pipe.class_names == tuple(str(i) for i in range(10)) and pipe.null_class == 10
    assert pipe.image_shape == (1, 28, 28) and pipe.device == torch.device("cpu")
    assert pipe.checkpoint.step == 8 and not pipe.model.training
    assert pipe.plan("ddim", 5).label == "DDIM-5" and pipe.plan("ddpm").label == "DDPM-50"
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw'"):
        Pipeline.from_checkpoint(tiny_run[0], weights="best")


def test_labels():
    torch.testing.assert_close(labels_for("all", 12), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))
    torch.testing.assert_close(labels_for(3, 2), torch.tensor([3, 3]))
    torch.testing.assert_close(labels_for("none", 2, num_classes=4), torch.tensor([4, 4]))


# Reference samplers written from the papers, in float64, over nothing but the pipeline's denoiser (x_t, t) -> (x_0, eps)
# and its alpha_bar: what `Pipeline.sample` must give for each registered name.
def reference_ddpm(denoise, x, alpha_bar, grid, noise):
    """Ho et al. 2020, Algorithm 2 with the posterior of eq. 7 (mean coefficients and beta-tilde)."""
    for t in grid:
        x0, _ = denoise(x.float(), torch.full((x.shape[0],), t))
        ab, ab_prev = alpha_bar[t], alpha_bar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - ab / ab_prev
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0.double() + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
        x = mean + ((1 - ab_prev) / (1 - ab) * beta).sqrt() * noise() if t > 0 else mean
    return x


def reference_ddim(denoise, x, alpha_bar, grid, noise):
    """Song et al. 2021, eq. 12 with eta = 0."""
    for i, t in enumerate(grid):
        x0, eps = denoise(x.float(), torch.full((x.shape[0],), t))
        ab_prev = alpha_bar[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        x = ab_prev.sqrt() * x0.double() + (1 - ab_prev).sqrt() * eps.double()
    return x


def reference_dpmpp_2m(denoise, x, alpha_bar, grid, noise):
    """Lu et al. 2022, DPM-Solver++(2M) (Algorithm 2) in lambda = log(alpha / sigma); the last step returns x_0."""
    lam = lambda t: 0.5 * torch.log(alpha_bar[t] / (1 - alpha_bar[t]))  # noqa: E731
    x0_prev = h_prev = None
    for i, t in enumerate(grid):
        x0, _ = denoise(x.float(), torch.full((x.shape[0],), t))
        x0 = x0.double()
        if i + 1 == len(grid):
            return x0
        s = grid[i + 1]
        h = lam(s) - lam(t)
        d = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
        x = ((1 - alpha_bar[s]) / (1 - alpha_bar[t])).sqrt() * x - alpha_bar[s].sqrt() * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


def reference_heun(denoise, x, alpha_bar, grid, noise):
    """Karras et al. 2022, Algorithm 1 (deterministic) in sigma_t = sqrt((1 - alpha_bar) / alpha_bar), on x_t /
    sqrt(alpha_bar); the result is x_0 (sigma = 0). D(x; sigma) is the x_0 the VP denoiser predicts at x_t."""
    sigma = lambda t: ((1 - alpha_bar[t]) / alpha_bar[t]).sqrt() if t is not None else torch.tensor(0.0, dtype=torch.float64)  # noqa: E731
    D = lambda x_s, t: denoise((x_s * alpha_bar[t].sqrt()).float(), torch.full((x.shape[0],), t))[0].double()  # noqa: E731
    x = x / alpha_bar[grid[0]].sqrt()
    for i, t in enumerate(grid):
        t_next = grid[i + 1] if i + 1 < len(grid) else None
        d = (x - D(x, t)) / sigma(t)
        x_euler = x + (sigma(t_next) - sigma(t)) * d
        if t_next is None:
            return x_euler
        d_next = (x_euler - D(x_euler, t_next)) / sigma(t_next)
        x = x + (sigma(t_next) - sigma(t)) * (d + d_next) / 2
    return x


def vp_denoiser(pipe, labels, w):
    """The pipeline's D(x; sigma) seen as (x_t, t) -> (x_0, eps) on x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar)
    eps, the form the papers write their samplers in."""
    denoise, ab = pipe.denoiser(labels, w=w), pipe.schedule.alpha_bar

    def vp(x_t, t):
        a = ab[t].view(-1, 1, 1, 1)
        x0 = denoise(x_t / a.sqrt(), pipe.schedule.sigmas[t])
        return x0, (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    return vp


# T = 50, trailing spacing (Lin et al. 2024): round(50 - i * 50 / 4) - 1 for i = 0..3; DDPM walks all of 49..0
REFERENCES = {"ddpm": (reference_ddpm, None, list(range(49, -1, -1))),
              "ddim": (reference_ddim, 4, [49, 37, 24, 11]),
              "dpm++2m": (reference_dpmpp_2m, 4, [49, 37, 24, 11]),
              "heun": (reference_heun, 4, [49, 37, 24, 11])}


def test_every_registered_sampler_runs_through_sample_as_its_paper_says(pipe):
    from typer.testing import CliRunner

    from tinydiff_cli.cli.main import app

    # the registry as the CLI lists it: a sampler registered without a reference here fails this test
    refused = CliRunner().invoke(app, ["sample", "--sampler", "no-such-sampler"])
    text = " ".join(refused.output.replace("│", " ").split())  # the message, unwrapped from its box
    registered = [name.strip() for name in text.split("choose one of ", 1)[1].split("╰")[0].split(",")]
    assert registered == list(REFERENCES), refused.output
    labels = pipe.labels("all", 3)
    alpha_bar = pipe.schedule.alpha_bar.double()
    for name, (reference, steps, grid) in REFERENCES.items():
        seen = []
        images = pipe.sample(labels, sampler=name, steps=steps, w=1.0, seed=1,
                             callback=lambda info: seen.append(info["sigma"]))
        plan = pipe.plan(name, steps)
        assert plan.timesteps == tuple(grid) and plan.sigmas[:-1].tolist() == pytest.approx(seen), name
        generator = torch.Generator().manual_seed(1)  # the initial noise first, then (DDPM) each step's
        x = torch.randn((3, 1, 28, 28), generator=generator).double()
        expected = reference(vp_denoiser(pipe, labels, 1.0), x, alpha_bar, grid,
                             lambda: torch.randn((3, 1, 28, 28), generator=generator).double())
        torch.testing.assert_close(images.double(), expected, atol=2e-4, rtol=0, msg=name)


def test_the_initial_noise_depends_on_the_seed_not_the_batch_size(pipe):
    labels = pipe.labels("all", 5)
    whole = pipe.sample(labels, steps=3, seed=4, w=0.0)  # a deterministic solver: a function of the initial noise
    torch.testing.assert_close(pipe.sample(labels, steps=3, seed=4, batch_size=2, w=0.0), whole)
    assert not torch.equal(pipe.sample(labels, steps=3, seed=5, w=0.0), whole)


def test_denoiser_is_the_guided_network_at_its_own_t(pipe):
    x_t, t, labels = torch.randn(2, 1, 28, 28), torch.tensor([10, 40]), pipe.labels(3, 2)
    ab = pipe.schedule.alpha_bar[t].view(-1, 1, 1, 1)
    x0 = pipe.denoiser(labels, w=2.0)(x_t / ab.sqrt(), pipe.schedule.sigmas[t])  # x = x_t / sqrt(alpha_bar)
    with torch.no_grad():  # eq. 6 on the eps-model's output, then Ho et al.'s eq. 4 solved for x_0, clipped
        eps = 3 * pipe.model(x_t, t, labels) - 2 * pipe.model(x_t, t, torch.full_like(labels, 10))
    torch.testing.assert_close(x0, ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1), atol=1e-4, rtol=1e-4)


def test_to_moves_model_and_formulation_together(pipe):
    assert pipe.to("cpu") is pipe and pipe.schedule.alpha_bar.device == pipe.device


def test_data_info_defaults_for_old_or_partial_metadata():
    info = DataInfo.from_meta({}, "fashion-mnist")
    assert (info.image_size, info.channels, info.num_classes) == (28, 1, 10) and info.class_names[0] == "T-shirt/top"
    assert DataInfo.from_meta({"num_classes": 3}, "mnist").class_names == ("0", "1", "2")
    assert DataInfo.from_meta(info.to_meta(), "mnist") == info


def test_the_default_sampler_is_the_measured_one_and_the_cli_says_so(pipe):
    import typing

    from tinydiff_cli.cli.options import SamplerOption, StepsOption
    from tinydiff_cli.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS

    plan = lambda *a, **k: (pipe.plan(*a, **k).sampler, pipe.plan(*a, **k).steps)  # noqa: E731
    assert plan() == (DEFAULT_SAMPLER, DEFAULT_STEPS)
    assert plan("ddim") == ("ddim", pipe.T)  # a named sampler without steps walks all T
    assert plan(steps=4) == (DEFAULT_SAMPLER, 4) and plan("ddpm") == ("ddpm", pipe.T)
    assert f"{DEFAULT_SAMPLER} with {DEFAULT_STEPS} steps" in typing.get_args(SamplerOption)[1].help
    assert f"default: {DEFAULT_STEPS} without --sampler" in typing.get_args(StepsOption)[1].help


def test_default_guidance_is_the_models_sample_w_inside_a_students_range(pipe):
    from tinydiff_cli.io.checkpoint import DistillInfo

    assert pipe.plan().w == pipe.checkpoint.config.train.sample_w == 1.0
    labels = pipe.labels("all", 4)  # without w, sample and trajectory guide at the model's own weight, as the CLI does
    unset = pipe.sample(labels, steps=2, seed=1)
    torch.testing.assert_close(unset, pipe.sample(labels, steps=2, seed=1, w=1.0))
    assert not torch.equal(unset, pipe.sample(labels, steps=2, seed=1, w=0.0))
    torch.testing.assert_close(pipe.trajectory(labels, steps=2, seed=1).x[-1], unset)
    x, sigma = torch.randn(4, 1, 28, 28), pipe.schedule.sigmas[30]
    torch.testing.assert_close(pipe.denoiser(labels)(x, sigma), pipe.denoiser(labels, 1.0)(x, sigma))
    config = pipe.checkpoint.config  # a pipeline around a model in memory takes its w from the config it is given
    config = replace(config, train=replace(config.train, sample_w=2.5))
    assert Pipeline.from_model(pipe.model, config, pipe.checkpoint.data).plan().w == 2.5
    w_of = lambda sample_w, distilled=None: plan_sampling(  # noqa: E731
        pipe.formulation, Config(train=TrainConfig(sample_w=sample_w)), distilled, SamplingRequest()).w
    assert w_of(2.5) == 2.5
    assert w_of(2.5, DistillInfo("dpm++2m", 10, 0.0, 2.0)) == 2.0 and w_of(0.5, DistillInfo("dpm++2m", 10, 1.0, 2.0)) == 1.0


def test_a_guidance_interval_guides_the_low_noise_steps_and_counts_its_passes(pipe):
    labels, plan = pipe.labels("all", 4), pipe.plan(steps=5, w=1.0)
    sigmas = plan.sigmas[:-1].tolist()  # falling along the grid
    max_sigma = (sigmas[2] + sigmas[3]) / 2  # the last two of five steps are guided
    assert plan.max_sigma == math.inf and plan.guidance == "w=1"  # no interval unless the config sets one
    assert pipe.network_evaluations(labels, plan) == 10
    assert pipe.network_evaluations(labels, pipe.plan("heun", 5, w=1.0)) == 18  # 2 * (2 * 5 - 1)
    guided_only_at = lambda m: pipe.sample(labels, steps=5, w=1.0, max_sigma=m, seed=1)  # noqa: E731
    inside = pipe.plan("ddim", 5, w=1.0, max_sigma=max_sigma)
    assert pipe.network_evaluations(labels, inside) == 5 + 2 and inside.guidance == f"w=1 at sigma <= {max_sigma:g}"
    assert pipe.network_evaluations(labels, pipe.plan("ddim", 5, w=0.0, max_sigma=max_sigma)) == 5
    interval = guided_only_at(max_sigma)
    assert not torch.equal(interval, pipe.sample(labels, steps=5, w=1.0, seed=1))
    assert not torch.equal(interval, pipe.sample(labels, steps=5, w=0.0, seed=1))
    torch.testing.assert_close(guided_only_at(sigmas[0] * 2), pipe.sample(labels, steps=5, w=1.0, seed=1))
    torch.testing.assert_close(guided_only_at(sigmas[-1] / 2), pipe.sample(labels, steps=5, w=0.0, seed=1))
    config = pipe.checkpoint.config  # a model's own interval comes from its config
    config = replace(config, train=replace(config.train, sample_w_max_sigma=max_sigma))
    own = Pipeline.from_model(pipe.model, config, pipe.checkpoint.data)
    assert own.plan().max_sigma == max_sigma
    torch.testing.assert_close(own.sample(labels, steps=5, w=1.0, seed=1), interval)
