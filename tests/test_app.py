"""The viewer driven headlessly with Streamlit's AppTest: generate, scrub, compare with `tinydiff sample`."""
import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import optional_module

optional_module("streamlit")  # .ci/run installs the app extra and requires it (TINYDIFF_REQUIRE_OPTIONAL=1)
from streamlit.testing.v1 import AppTest  # noqa: E402

from tinydiff_cli.app import logic  # noqa: E402
from tinydiff_cli.cli.main import app  # noqa: E402
from tinydiff_cli.cli.viewer import SCRIPT  # noqa: E402
from tinydiff_cli.data.datasets import to_uint8  # noqa: E402

runner = CliRunner()


@pytest.fixture
def runs(tiny_run):
    return tiny_run[0].parent


def start(runs_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("TINYDIFF_APP_RUNS", str(runs_dir))
    at = AppTest.from_file(str(SCRIPT), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_generate_then_scrub_without_running_the_model(runs, monkeypatch, tmp_path):
    at = start(runs, monkeypatch)
    labels = at.selectbox(key="checkpoint").options
    assert any("unet, tiny, mnist, step 8" in label for label in labels)
    at.selectbox(key="checkpoint").select_index(next(i for i, l in enumerate(labels) if l.startswith("tiny/last.json")))
    at.selectbox(key="class").select("7")
    at.radio(key="sampler").set_value("ddim")
    at.run()
    at.slider(key="steps").set_value(5)
    at.slider(key="w").set_value(2.5)  # not the tiny model's own w (1), so the slider's value must reach the model
    at.number_input(key="seed").set_value(3)
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    result = at.session_state["result"]
    assert len(result["trajectory"].timesteps) == 5
    assert result["frames"].x.shape[0] == 6 and len(result["frames"].captions) == 6  # 5 steps, then the result
    assert at.session_state["generations"] == 1

    # the last frame is what `tinydiff sample` gives for the same checkpoint, seed and settings
    npz = tmp_path / "s.npz"
    sampled = runner.invoke(app, ["sample", "--checkpoint", str(runs / "tiny"), "--digit", "7", "--n", "1", "--ddim", "5",
                                  "--w", "2.5", "--seed", "3", "--out", str(tmp_path / "g.png"), "--npz", str(npz),
                                  "--device", "cpu"])
    assert sampled.exit_code == 0, sampled.output
    np.testing.assert_array_equal(to_uint8(result["trajectory"].x[-1]).numpy(), np.load(npz)["arr_0"])

    # scrubbing indexes the stored frames: no forward pass, no new generation
    calls = logic.model_forward_calls
    shown_before = [m.value for m in at.markdown]
    at.slider(key="frame").set_value(1)
    at.run()
    assert not at.exception
    assert logic.model_forward_calls == calls
    assert at.session_state["generations"] == 1
    assert [m.value for m in at.markdown] != shown_before  # the step caption moved
    assert any("step 2/5: t = " in m.value for m in at.markdown)


def test_no_checkpoints_explains_how_to_train(tmp_path, monkeypatch):
    at = start(tmp_path, monkeypatch)
    assert any("tinydiff train --preset unet-small" in info.value for info in at.info)


def test_corrupt_file_shows_a_message_and_the_app_keeps_serving(runs, tmp_path, monkeypatch):
    bad_runs = tmp_path / "runs"
    bad_runs.mkdir()
    (bad_runs / "broken.safetensors").write_bytes(b"not a model")
    at = start(bad_runs, monkeypatch)
    assert "not a readable tinydiff model" in at.selectbox(key="checkpoint").options[0]
    assert at.error and "Cannot use broken.safetensors" in at.error[0].value
    assert not at.exception


def test_app_command_without_the_extra_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real(name, *a))
    result = runner.invoke(app, ["visualize", "app", "--no-browser"])
    assert result.exit_code == 2 and "pip install 'tinydiff[app]'" in result.output


def test_generate_with_each_kind_of_sampler_at_the_w_it_is_given(runs):
    import torch

    pipe = logic.load(runs / "tiny")
    assert logic.sampler_controls("ddpm") == (False, False) and logic.sampler_controls("ddim") == (True, True)
    assert logic.sampler_controls("dpm++2m") == (True, False)
    for sampler, steps, eta in (("ddpm", None, 0.0), ("ddim", 4, 0.0), ("ddim", 4, 1.0), ("dpm++2m", 4, 0.0)):
        ends = {}
        for w in (0.0, 2.0):
            traj = logic.generate(pipe, label=7, sampler=sampler, steps=steps, eta=eta, w=w, seed=5)
            assert len(traj.timesteps) == (pipe.T if steps is None else steps)
            # the app's sample is the engine's for the same class, sampler, eta, w and seed
            expected = pipe.sample(torch.tensor([7]), sampler=sampler, steps=steps, eta=eta, w=w, seed=5)
            torch.testing.assert_close(traj.x[-1], expected, rtol=0, atol=1e-6)
            ends[w] = traj.x[-1]
            assert traj.sampler == pipe.plan(sampler, steps, eta=eta, w=w).description  # what the page shows
        assert not torch.equal(ends[0.0], ends[2.0]), sampler  # w reaches the model
    unconditional = logic.generate(pipe, label=None, sampler="ddim", steps=4, eta=0.0, w=2.0, seed=5)
    torch.testing.assert_close(unconditional.x[-1], pipe.sample(pipe.labels("none", 1), sampler="ddim", steps=4,
                                                                w=0.0, seed=5), rtol=0, atol=1e-6)  # no w without a class
    assert pipe.plan("ddpm", None, eta=0.0).description == "DDPM-50"
    assert pipe.plan("ddim", 7, eta=0.5).description == "DDIM-7 (eta=0.5)"


def test_a_distilled_model_samples_with_its_own_steps_in_the_app(tiny_run, monkeypatch, tmp_path):
    runs_dir = tmp_path / "runs"
    result = runner.invoke(app, ["distill", "--checkpoint", str(tiny_run[0]), "--steps", "2", "--teacher-steps", "4",
                                 "--stage-iterations", "2", "--batch-size", "8", "--out", str(runs_dir / "tiny-2step"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    at = start(runs_dir, monkeypatch)
    labels = at.selectbox(key="checkpoint").options
    at.selectbox(key="checkpoint").select_index(next(i for i, l in enumerate(labels) if l.startswith("tiny-2step/last.json")))
    at.run()
    assert not at.exception, at.exception
    assert not at.radio  # no sampler to choose: the model brings its own
    assert any("Distilled model: DDIM in 2 steps" in c.value for c in at.caption)
    w = at.slider(key="w_distilled")
    assert (w.min, w.max) == (0.0, 2.0)
    w.set_value(1.5)
    at.selectbox(key="class").select("7")
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    traj = at.session_state["result"]["trajectory"]
    assert len(traj.timesteps) == 2
    import torch

    from tinydiff_cli.sampling.pipeline import Pipeline

    student = Pipeline.from_checkpoint(runs_dir / "tiny-2step")  # the student's own 2 steps, at the slider's w
    diffs = {w_given: (traj.x[-1] - student.sample(torch.tensor([7]), w=w_given, seed=0)).abs().max().item()
             for w_given in (1.5, 0.0, 2.0)}
    assert diffs[1.5] == 0 and diffs[0.0] > 0 and diffs[2.0] > 0, diffs  # bit for bit at its w, not at another
