"""The viewer driven headlessly with Streamlit's AppTest: generate, scrub, compare with `tinydiff sample`."""
import importlib.util

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tinydiff_cli.app import logic  # noqa: E402
from tinydiff_cli.cli import app  # noqa: E402
from tinydiff_cli.commands.app import SCRIPT  # noqa: E402
from tinydiff_cli.data import to_uint8  # noqa: E402

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
    at.slider(key="w").set_value(1.0)
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
                                  "--w", "1.0", "--seed", "3", "--out", str(tmp_path / "g.png"), "--npz", str(npz),
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


def test_generate_with_each_kind_of_sampler(runs):
    pipe = logic.load(runs / "tiny")
    assert logic.sampler_controls("ddpm") == (False, False) and logic.sampler_controls("ddim") == (True, True)
    ddpm = logic.generate(pipe, label=None, sampler="ddpm", steps=None, eta=0.0, w=1.0, seed=0)
    assert len(ddpm.timesteps) == pipe.T and ddpm.x.shape[1] == 1
    assert pipe.describe_sampler("ddpm", None, 0.0) == "DDPM-50"
    assert pipe.describe_sampler("ddim", 7, 0.5) == "DDIM-7 (eta=0.5)"


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
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    assert len(at.session_state["result"]["trajectory"].timesteps) == 2
