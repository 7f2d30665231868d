"""Pipeline: loading, the facts it holds, and drawing through the sampler registry."""
import math
from dataclasses import replace

import pytest
import torch

from tinydiff_cli.checkpoint import DataInfo
from tinydiff_cli.config import Config, TrainConfig
from tinydiff_cli.pipeline import Pipeline, default_guidance, labels_for
from tinydiff_cli.diffusion.sampling import SAMPLERS, sampling_sigmas


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_checkpoint(tiny_run[0])


def test_holds_what_sampling_needs(pipe, tiny_run):
    assert pipe.T == 50 and pipe.schedule.T == 50
    assert pipe.formulation.name == "eps" and pipe.formulation.discrete
    assert pipe.class_names == tuple(str(i) for i in range(10)) and pipe.null_class == 10
    assert pipe.image_shape == (1, 28, 28) and pipe.device == torch.device("cpu")
    assert pipe.checkpoint.step == 8 and not pipe.model.training
    assert pipe.describe_sampler("ddim", 5) == "DDIM-5" and pipe.describe_sampler("ddpm") == "DDPM-50"
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw'"):
        Pipeline.from_checkpoint(tiny_run[0], weights="best")


def test_labels():
    torch.testing.assert_close(labels_for("all", 12), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))
    torch.testing.assert_close(labels_for(3, 2), torch.tensor([3, 3]))
    torch.testing.assert_close(labels_for("none", 2, num_classes=4), torch.tensor([4, 4]))


def test_every_registered_sampler_runs_through_sample(pipe):
    labels = pipe.labels("all", 3)
    for name in SAMPLERS:
        steps = None if name == "ddpm" else 4
        seen = []
        images = pipe.sample(labels, sampler=name, steps=steps, w=1.0, seed=1,
                             callback=lambda info: seen.append(info["sigma"]))
        assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
        assert seen == sampling_sigmas(pipe.formulation, name, steps)[:-1].tolist()


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

    from tinydiff_cli.cli import SamplerOption, StepsOption
    from tinydiff_cli.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS

    assert pipe.sampling() == (DEFAULT_SAMPLER, DEFAULT_STEPS)
    assert pipe.sampling("ddim") == ("ddim", None)  # a named sampler without steps walks all T
    assert pipe.sampling(steps=4) == (DEFAULT_SAMPLER, 4)
    assert len(pipe.sigmas()) == DEFAULT_STEPS + 1 and len(pipe.sigmas("ddpm")) == pipe.T + 1
    assert f"{DEFAULT_SAMPLER} with {DEFAULT_STEPS} steps" in typing.get_args(SamplerOption)[1].help
    assert f"default: {DEFAULT_STEPS} without --sampler" in typing.get_args(StepsOption)[1].help


def test_default_guidance_is_the_models_sample_w_inside_a_students_range(pipe):
    from tinydiff_cli.checkpoint import DistillInfo

    assert pipe.default_w == pipe.checkpoint.config.train.sample_w == 1.0
    labels = pipe.labels("all", 4)  # without w, sample and trajectory guide at the model's own weight, as the CLI does
    unset = pipe.sample(labels, steps=2, seed=1)
    torch.testing.assert_close(unset, pipe.sample(labels, steps=2, seed=1, w=1.0))
    assert not torch.equal(unset, pipe.sample(labels, steps=2, seed=1, w=0.0))
    torch.testing.assert_close(pipe.trajectory(labels, steps=2, seed=1).x[-1], unset)
    x, sigma = torch.randn(4, 1, 28, 28), pipe.schedule.sigmas[30]
    torch.testing.assert_close(pipe.denoiser(labels)(x, sigma), pipe.denoiser(labels, 1.0)(x, sigma))
    config = pipe.checkpoint.config  # a pipeline around a model in memory takes its w from the config it is given
    config = replace(config, train=replace(config.train, sample_w=2.5))
    assert Pipeline.from_model(pipe.model, config, pipe.checkpoint.data).default_w == 2.5
    assert default_guidance(Config(train=TrainConfig(sample_w=2.5))) == 2.5
    assert default_guidance(Config(train=TrainConfig(sample_w=2.5)), DistillInfo("ddim", 2, 0.0, 2.0)) == 2.0
    assert default_guidance(Config(train=TrainConfig(sample_w=0.5)), DistillInfo("ddim", 2, 1.0, 2.0)) == 1.0


def test_a_guidance_interval_guides_the_low_noise_steps_and_counts_its_passes(pipe):
    labels, grid = pipe.labels("all", 4), pipe.sigmas(steps=5)
    sigmas = grid[:-1].tolist()  # falling along the grid
    max_sigma = (sigmas[2] + sigmas[3]) / 2  # the last two of five steps are guided
    assert pipe.max_sigma == math.inf  # no interval unless the config sets one
    assert pipe.network_evaluations(labels, 1.0, "dpm++2m", grid) == 10
    assert pipe.network_evaluations(labels, 1.0, "heun", grid) == 18  # 2 * (2 * 5 - 1)
    guided_only_at = lambda m: replace(pipe, w_max_sigma=m).sample(labels, steps=5, w=1.0, seed=1)  # noqa: E731
    assert replace(pipe, w_max_sigma=max_sigma).network_evaluations(labels, 1.0, "ddim", grid) == 5 + 2
    assert replace(pipe, w_max_sigma=max_sigma).network_evaluations(labels, 0.0, "ddim", grid) == 5
    interval = guided_only_at(max_sigma)
    assert not torch.equal(interval, pipe.sample(labels, steps=5, w=1.0, seed=1))
    assert not torch.equal(interval, pipe.sample(labels, steps=5, w=0.0, seed=1))
    torch.testing.assert_close(guided_only_at(sigmas[0] * 2), pipe.sample(labels, steps=5, w=1.0, seed=1))
    torch.testing.assert_close(guided_only_at(sigmas[-1] / 2), pipe.sample(labels, steps=5, w=0.0, seed=1))
    config = pipe.checkpoint.config  # a model's own interval comes from its config
    config = replace(config, train=replace(config.train, sample_w_max_sigma=max_sigma))
    own = Pipeline.from_model(pipe.model, config, pipe.checkpoint.data)
    assert own.max_sigma == max_sigma
    torch.testing.assert_close(own.sample(labels, steps=5, w=1.0, seed=1), interval)
