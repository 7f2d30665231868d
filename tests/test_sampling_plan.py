"""The one sampling plan: every default and every refusal, decided by `plan_sampling` from a model's config (and what a
student was distilled for) alone, and used as it is by the commands, the app and Pipeline."""
import math
from dataclasses import replace

import pytest
import torch

from tinydiff_cli.io.checkpoint import DistillInfo
from tinydiff_cli.config import Config, DiffusionConfig, TrainConfig
from tinydiff_cli.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.sampling.plan import MAX_STEPS, SamplingRequest, plan_sampling


def config(objective="eps", timesteps=50, **train) -> Config:
    return Config(diffusion=DiffusionConfig(objective=objective, timesteps=timesteps), train=TrainConfig(**train))


def plan(cfg: Config, distilled=None, **request):
    return plan_sampling(cfg.diffusion.formulation(), cfg, distilled, SamplingRequest(**request))


def test_the_defaults_of_a_discrete_model_come_from_the_registry_and_its_config():
    cfg = config(sample_w=0.75)
    default = plan(cfg)
    assert (default.sampler, default.steps, default.w, default.max_sigma, default.eta) == (DEFAULT_SAMPLER, DEFAULT_STEPS, 0.75, math.inf, 0.0)
    assert default.label == f"{DEFAULT_SAMPLER.upper()}-{DEFAULT_STEPS}" and default.guidance == "w=0.75"
    torch.testing.assert_close(default.sigmas, cfg.diffusion.formulation().sigmas(DEFAULT_STEPS), rtol=0, atol=0)
    assert default.timesteps == tuple(cfg.diffusion.formulation().timesteps(DEFAULT_STEPS))
    assert plan(config(timesteps=6)).steps == 6  # the default steps, at most T
    assert plan(cfg, sampler="ddim").steps == 50 and plan(cfg, sampler="ddpm").steps == 50  # named, no steps: all T
    assert plan(cfg, steps=4).sampler == DEFAULT_SAMPLER
    own_interval = plan(config(sample_w_max_sigma=5.0))
    assert own_interval.max_sigma == 5.0 and own_interval.guidance == "w=1 at sigma <= 5"
    assert plan(config(sample_w_max_sigma=5.0), max_sigma=math.inf).max_sigma == math.inf  # the request wins
    assert plan(cfg, w=0.0, max_sigma=2.0).guidance == "w=0"  # no interval to speak of without guidance
    ddim = plan(cfg, sampler="ddim", steps=7, eta=0.5)
    assert ddim.description == "DDIM-7 (eta=0.5)" and ddim.options() == {"eta": 0.5}
    assert plan(cfg, sampler="ddpm").description == "DDPM-50" and plan(cfg, sampler="ddpm").options() == {}


def test_a_continuous_model_has_no_timesteps_and_its_own_step_limit():
    for objective in ("edm", "flow"):
        cfg = config(objective)
        assert plan(cfg).steps == DEFAULT_STEPS and plan(cfg, sampler="heun").steps == DEFAULT_STEPS
        assert plan(cfg, sampler="ddim", steps=3).timesteps is None
        assert plan(cfg, steps=MAX_STEPS).steps == MAX_STEPS
        with pytest.raises(TinydiffError, match=f"--steps must be between 1 and {MAX_STEPS:,}, got {MAX_STEPS + 1}"):
            plan(cfg, steps=MAX_STEPS + 1)
        with pytest.raises(TinydiffError, match="ddpm steps through the timesteps of a discrete schedule"):
            plan(cfg, sampler="ddpm")


@pytest.mark.parametrize("request_, message", [
    ({"steps": 0}, "--steps must be between 1 and the model's T=50, got 0"),
    ({"steps": 51, "steps_flag": "--ddim"}, "--ddim must be between 1 and the model's T=50, got 51"),
    ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim"),
    ({"sampler": "ddpm", "steps": 10}, "ddpm always runs all T=50 steps"),
    ({"eta": 1.5}, r"--eta must be in \[0, 1\], got 1.5"),
    ({"max_sigma": 0.0}, "--w-max-sigma must be positive"),
    ({"max_sigma": math.nan}, "--w-max-sigma must be positive"),
])
def test_every_refusal_is_one_line_that_names_the_flag(request_, message):
    with pytest.raises(TinydiffError, match=message):
        plan(config(), **request_)


def test_a_student_samples_as_it_was_distilled_at_a_w_inside_its_range():
    student = DistillInfo("ddim", 2, 0.5, 2.0, "runs/teacher/last.json")
    cfg = config(sample_w=3.0, sample_w_max_sigma=5.0)
    own = plan(cfg, student)
    # its sampler and steps, the teacher's w moved inside [0.5, 2], guidance at every step (its input, learned)
    assert (own.sampler, own.steps, own.w, own.max_sigma, own.label) == ("ddim", 2, 2.0, math.inf, "distilled DDIM-2")
    assert plan(config(sample_w=0.0), student).w == 0.5
    assert plan(cfg, student, sampler="ddim", steps=2, w=1.0, max_sigma=math.inf).w == 1.0  # its own, spelled out
    wrong = "distilled to sample with deterministic ddim in 2 steps; leave out the sampler flags .* \\(runs/teacher"
    for request in ({"steps": 3}, {"sampler": "dpm++2m"}, {"eta": 1.0}):
        with pytest.raises(TinydiffError, match=wrong):
            plan(cfg, student, **request)
    with pytest.raises(TinydiffError, match=r"learned guidance weights w in \[0.5, 2\]; got --w 2.5"):
        plan(cfg, student, w=2.5)
    with pytest.raises(TinydiffError, match="--w-max-sigma does not apply to a distilled model"):
        plan(cfg, student, max_sigma=5.0)
    one_step = DistillInfo("ddim", 1, 0.0, 0.0)
    with pytest.raises(TinydiffError, match="in 1 step; leave out"):
        plan(cfg, one_step, steps=2)


def test_pipeline_draws_with_the_plan_and_nothing_else(tiny_run):
    from tinydiff_cli.cli.common import SamplingOptions, load_pipeline, plan_for
    from tinydiff_cli.sampling.pipeline import Pipeline

    ckpt_path, _ = tiny_run
    pipe = Pipeline.from_checkpoint(ckpt_path)
    labels = pipe.labels("all", 3)
    options = SamplingOptions(sampler="ddim", steps=4, w=1.5, w_max_sigma=20.0, seed=2)
    the_plan = options.plan(pipe.checkpoint)  # what a command decides, from the checkpoint before loading it
    assert vars(the_plan).keys() == vars(pipe.plan("ddim", 4, w=1.5, max_sigma=20.0)).keys()
    assert (the_plan.sampler, the_plan.steps, the_plan.w, the_plan.max_sigma) == ("ddim", 4, 1.5, 20.0)
    assert plan_for(pipe.checkpoint).label == pipe.plan().label
    drawn = pipe.sample(labels, the_plan, seed=2)
    torch.testing.assert_close(drawn, pipe.sample(labels, sampler="ddim", steps=4, w=1.5, max_sigma=20.0, seed=2),
                               rtol=0, atol=0)
    # the interval reaches the draw: at sigma <= 20 only the last steps are guided, which changes the pixels
    assert not torch.equal(drawn, pipe.sample(labels, replace(the_plan, max_sigma=math.inf), seed=2))
    torch.testing.assert_close(pipe.trajectory(labels, the_plan, seed=2).x[-1], drawn, rtol=0, atol=0)
    with pytest.raises(TypeError, match="give a plan or the keywords of Pipeline.plan, not both"):
        pipe.sample(labels, the_plan, w=0.0)
    loaded = load_pipeline(pipe.checkpoint, "cpu")  # loading takes no sampling settings: nothing to patch
    torch.testing.assert_close(loaded.sample(labels, the_plan, seed=2), drawn, rtol=0, atol=0)
    with pytest.raises(TinydiffError, match="--n and --batch-size must be at least 1"):
        SamplingOptions(batch_size=0).plan(pipe.checkpoint)
