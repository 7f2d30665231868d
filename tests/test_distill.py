"""Distillation: the targets against their definitions, a stage that learns, the CLI end to end, exact resume."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tinydiff_cli.io.checkpoint import load_checkpoint, load_model
from tinydiff_cli.cli.main import app
from tinydiff_cli.diffusion.formulations import make_formulation
from tinydiff_cli.training.distill import (Distiller, DistillSettings, ddim_step, plan_stages, student_from_teacher,
                                           two_step_target)
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.sampling.pipeline import Pipeline

from test_samplers import exact_gaussian_denoiser

runner = CliRunner()


@pytest.mark.parametrize("T", [50, 1000])
def test_grids_nest_so_one_student_step_is_two_teacher_steps(T):
    for n in (n for n in (1, 2, 4, 8, 16, 32) if 2 * n <= T):
        form = make_formulation("v", timesteps=T)
        assert form.timesteps(2 * n)[::2] == form.timesteps(n)
        assert form.sigmas(2 * n)[::2].tolist() == form.sigmas(n).tolist()  # the final 0 included


def test_two_step_target_makes_one_ddim_step_land_where_two_teacher_steps_do():
    """Salimans & Ho, Algorithm 2: one DDIM step from x_t with the target x_0 must reach the teacher's two-step
    point, here with the exact Gaussian denoiser as teacher; for t_next = -1 the target is the teacher's final x_0."""
    form = make_formulation("eps")
    teacher = exact_gaussian_denoiser(form, 0.3, 0.5, 6)
    grid, fine = form.sigmas(3), form.sigmas(6)
    i = torch.tensor([0, 1, 2, 0, 1, 2])
    sigma, sigma_mid, sigma_next = grid[i], fine[2 * i + 1], grid[i + 1]
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * (1 + sigma**2).sqrt().view(-1, 1, 1, 1)
    target = two_step_target(teacher, x, sigma, sigma_mid, sigma_next)
    one_step = ddim_step(target, x, sigma, sigma_next)
    # the teacher's two steps, written out with DDIM's eq. 12 in alpha_bar: x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps
    ab = lambda s: (1 / (1 + s**2)).view(-1, 1, 1, 1)  # noqa: E731

    def teacher_ddim(x_s, s, s_next):  # in x_t = sqrt(ab) x, the VP space
        x0 = teacher(x_s / ab(s).sqrt(), s)
        eps = (x_s - ab(s).sqrt() * x0) / (1 - ab(s)).sqrt()
        return ab(s_next).sqrt() * x0 + (1 - ab(s_next)).sqrt() * eps

    x_next = teacher_ddim(teacher_ddim(ab(sigma).sqrt() * x, sigma, sigma_mid), sigma_mid, sigma_next)
    torch.testing.assert_close(ab(sigma_next).sqrt() * one_step, x_next, atol=1e-4, rtol=1e-4)
    last = i == 2
    x_mid = ddim_step(teacher(x, sigma), x, sigma, sigma_mid)
    torch.testing.assert_close(target[last], teacher(x_mid, sigma_mid)[last])


def test_plan_halves_from_the_teacher_grid_down_to_the_steps():
    stages = plan_stages(DistillSettings(steps=1, teacher_steps=8))
    assert [(s.kind, s.steps) for s in stages] == [("guidance", 8), ("halve", 4), ("halve", 2), ("halve", 1)]
    assert [(s.kind, s.steps) for s in plan_stages(DistillSettings(steps=4, teacher_steps=4))] == [("guidance", 4)]
    with pytest.raises(TinydiffError, match="power of two"):
        DistillSettings(steps=3, teacher_steps=8).validate()


def test_the_student_starts_as_its_teachers_network_for_every_w(tiny_run):
    run_dir, _ = tiny_run
    ckpt = load_checkpoint(run_dir)
    teacher = load_model(ckpt)
    student, cfg = student_from_teacher(teacher, ckpt.config, ckpt.data)
    assert cfg.model.guidance_input and cfg.diffusion.objective == "v"
    g = torch.Generator().manual_seed(0)
    x, t, labels = torch.randn(4, 1, 28, 28, generator=g), torch.tensor([3, 10, 30, 49]), torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        for w in (0.0, 1.5):
            torch.testing.assert_close(student(x, t, labels, torch.full((4,), w)), teacher(x, t, labels))


def tiny_settings(**overrides) -> DistillSettings:
    values = dict(steps=2, teacher_steps=4, batch_size=16, lr=1e-3, stage_iterations=6, max_minutes=None,
                  log_every=2, checkpoint_every=100)
    return DistillSettings(**{**values, **overrides})


def mean_loss(distiller: Distiller, seed: int = 123, batches: int = 6) -> float:
    distiller.generator.manual_seed(seed)
    with torch.no_grad():
        return sum(distiller.loss(*distiller.batch()).item() for _ in range(batches)) / batches


def assert_learns(d: Distiller, steps: int = 40, lr: float = 2e-3) -> None:
    """The stage's loss on fixed batches falls below 0.7 of its start within `steps` iterations."""
    before = mean_loss(d)
    d.generator.manual_seed(0)
    for _ in range(steps):
        d.train_step(lr)
    after = mean_loss(d)
    assert after < 0.7 * before, (before, after)


def test_a_halving_stage_learns_to_match_two_teacher_steps(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    d = Distiller(load_checkpoint(run_dir), tiny_settings(), tmp_path / "d", "cpu")
    for _ in range(5):
        d.train_step(1e-3)
    d.finish_stage("test")
    assert (d.stage.kind, d.stage.steps) == ("halve", 2)
    assert_learns(d)


def test_guidance_stage_learns_the_guided_teacher(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    d = Distiller(load_checkpoint(run_dir), tiny_settings(), tmp_path / "d", "cpu")
    assert_learns(d)


class StopAt:
    """A reporter that asks the distiller to stop at a given (stage, iteration), as Ctrl-C would."""

    def __init__(self, stage: int, step: int):
        self.stage, self.step, self.distiller = stage, step, None

    def start(self, total, step, description=""):
        pass

    def update(self, step, metrics):
        if self.distiller.stage_index == self.stage and step == self.step:
            self.distiller.request_stop()

    def log(self, message):
        pass

    def finish(self):
        pass


def test_an_interrupted_distillation_resumes_exactly(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    teacher = load_checkpoint(run_dir)
    whole = Distiller(teacher, tiny_settings(), tmp_path / "whole", "cpu", reporter=StopAt(-1, -1))
    whole.reporter.distiller = whole
    assert whole.run().stop_reason == "done"

    first = Distiller(teacher, tiny_settings(), tmp_path / "cut", "cpu", reporter=StopAt(1, 3))
    first.reporter.distiller = first
    assert first.run().stop_reason == "interrupted"
    saved = load_checkpoint(tmp_path / "cut")
    assert saved.meta["distill"]["stage"] == 1 and saved.meta["distill"]["stage_step"] == 3
    assert not saved.meta["distill"]["complete"]

    second = Distiller(teacher, tiny_settings(), tmp_path / "cut", "cpu", reporter=StopAt(-1, -1))
    second.reporter.distiller = second
    second.load_state(saved)
    assert second.run().stop_reason == "done"
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut")
    assert a.meta["distill"]["complete"] and b.meta["distill"]["complete"]
    for key, value in a.tensors("ema").items():
        torch.testing.assert_close(b.tensors("ema")[key], value, msg=key)


def test_distill_then_sample_and_export_end_to_end(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "tiny-1step"
    result = runner.invoke(app, ["distill", "--checkpoint", str(run_dir), "--steps", "1", "--teacher-steps", "2",
                                 "--stage-iterations", "4", "--batch-size", "8", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "stage 2/2" in result.output and "distillation finished" in result.output
    meta = json.loads((out / "last.json").read_text())
    assert meta["distilled"]["steps"] == 1 and meta["distilled"]["w_max"] == 2.0 and meta["step"] == 8
    assert (out / "stage1.json").exists() and (out / "samples" / "stage2_ddim1.png").exists()

    pipe = Pipeline.from_checkpoint(out)
    assert pipe.takes_w and pipe.plan().label == "distilled DDIM-1"

    result = runner.invoke(app, ["sample", "--checkpoint", str(out), "--n", "4", "--out", str(tmp_path / "s.png"),
                                 "--device", "cpu", "--w", "1"])
    assert result.exit_code == 0, result.output
    assert "distilled DDIM-1" in result.output and (tmp_path / "s.png").exists()
    for flags, message in ((["--steps", "3"], "distilled to sample with deterministic ddim in 1 step;"),
                           (["--sampler", "dpm++2m"], "distilled to sample with deterministic ddim"),
                           (["--eta", "1"], "distilled to sample with deterministic ddim"),
                           (["--w", "3"], "w in [0, 2]")):
        result = runner.invoke(app, ["sample", "--checkpoint", str(out), "--n", "2", "--device", "cpu",
                                     "--out", str(tmp_path / "x.png"), *flags])
        assert result.exit_code == 2 and message in result.output, result.output

    exported = tmp_path / "student.safetensors"
    result = runner.invoke(app, ["export", "--checkpoint", str(out), "--out", str(exported)])
    assert result.exit_code == 0, result.output
    again = Pipeline.from_checkpoint(exported)
    assert again.distilled == pipe.distilled and again.takes_w
    labels = pipe.labels("all", 3)
    torch.testing.assert_close(again.sample(labels, w=1.0), pipe.sample(labels, w=1.0))
    result = runner.invoke(app, ["export", "--checkpoint", str(out), "--format", "pt2", "--out", str(tmp_path / "s.pt2")])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["compare", "--checkpoint", str(run_dir), "--samplers", "ddim", "--steps", "2",
                                 "--distilled", str(out), "--n", "4", "--no-eval", "--json", "--device", "cpu",
                                 "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("{"):])["samplers"]
    assert [(r["sampler"], r["network_evaluations"]) for r in rows] == [("DDPM-50", 100), ("DDIM-2", 4),
                                                                         ("distilled DDIM-1", 1)]
    assert json.loads(result.stdout[result.stdout.index("{"):])["w"] == 1.0  # the teacher's own train.sample_w

    # A teacher whose own w (3) is outside what the student learned ([0, 2]): without --w, compare moves it into the
    # student's range instead of refusing a w the user never gave.
    teacher3 = tmp_path / "teacher-w3"
    teacher3.mkdir()
    shutil.copy(run_dir / "last.safetensors", teacher3 / "last.safetensors")
    meta = json.loads((run_dir / "last.json").read_text())
    meta["config"]["train"]["sample_w"] = 3.0
    (teacher3 / "last.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["compare", "--checkpoint", str(teacher3), "--samplers", "ddim", "--steps", "2",
                                 "--distilled", str(out), "--n", "4", "--no-eval", "--json", "--device", "cpu",
                                 "--out", str(tmp_path / "c3.png")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["w"] == 2.0

    for command, message in ((["compare", "--checkpoint", str(out), "--no-eval"], "pass its teacher as --checkpoint"),
                             (["train", "--resume", str(out)], "tinydiff distill --resume"),
                             (["distill", "--resume", str(out)], "is a finished distillation"),
                             (["distill", "--resume", str(out / "stage1.json")], "not a resumable state")):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and message in result.output, (command, result.output)


def test_distill_refuses_what_it_cannot_do(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    result = runner.invoke(app, ["distill", "--checkpoint", str(run_dir), "--steps", "3", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "power of two" in result.output
    result = runner.invoke(app, ["distill", "--resume", str(run_dir)])
    assert result.exit_code == 2 and "not a distillation in progress" in result.output
