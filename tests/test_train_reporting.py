"""What `train` tells its user: the undertrained warning, an honest summary, a progress line that is never cut,
a Ctrl-C that skips a slow preview, and where output files land (a newcomer's first hour, issue 19)."""
import json
import math
import os
import re
import signal
import time

import pytest
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app, normalize_argv
from tinydiff_cli.config import config_from_dict, load_config, used_settings, validate
from tinydiff_cli.cli.ui import format_rate

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv([str(a) for a in args]))


def test_a_budget_that_ends_before_one_epoch_warns_and_its_advice_works(tiny_preset, tmp_path):
    from conftest import make_mnist

    run, data_dir = tmp_path / "run", make_mnist(tmp_path / "data", n_train=512)  # 16 steps of 32 per epoch
    # A budget of 60 ms: the loop's first check comes about 1 ms after its clock starts (a 60x margin, so at least
    # one step), and 16 steps inside 60 ms would take under 4 ms a step (this model takes ~170 ms on the 2-core CI
    # machine, and far more than 4 ms on any CPU), so the run stops before one epoch. How many steps it makes
    # depends on the machine; the warning's numbers must agree with that count.
    # log_every is past the end: no logging window ever fills, whatever the count.
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--device", "cpu",
                    "--set", "train.max_minutes=0.001", "--set", "train.log_every=1000")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    steps = json.loads((run / "last.json").read_text())["step"]
    assert 1 <= steps < 16, text
    assert (f"warning: undertrained. The time budget ended after {steps} step{'s' if steps > 1 else ''}, "
            f"{steps / 16:.2f} of one epoch (this preset plans 1)") in text
    speed = re.search(r"at (\d+) images/s on average", text)
    advice = re.search(r"To reach one epoch at this speed: (tinydiff train --resume \S+ --max-minutes (\d+))", text)
    assert speed and advice, text
    # the minutes it advises: the images left in the epoch at the speed it measured, rounded up (the speed is
    # printed to the image/s, hence the range)
    left = (16 - steps) * 32
    assert math.ceil(left / (int(speed.group(1)) + 1) / 60) <= int(advice.group(2)) <= math.ceil(
        left / max(int(speed.group(1)) - 1, 1e-9) / 60)
    # the summary lists only what exists: no logging window filled, so there is no loss.png
    assert not (run / "loss.png").exists() and "loss.png" not in result.output
    assert "n/a (no full logging window)" in text

    resumed = invoke(*advice.group(1).split()[1:], "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "last.json").read_text())["epoch"] == 1
    assert "undertrained" not in resumed.output
    elapsed = json.loads((run / "last.json").read_text())["elapsed_s"]
    # one figure for the whole run (the checkpoint's), and this session's beside it
    whole = re.search(r"(\d+:\d\d) this session, (\d+:\d\d) over the whole run", " ".join(resumed.output.split()))
    assert whole, resumed.output
    minutes, seconds = map(int, whole.group(2).split(":"))
    assert abs(60 * minutes + seconds - elapsed) <= 0.5
    assert "loss.png" in resumed.output and (run / "loss.png").exists()


def test_a_run_of_one_epoch_or_more_gives_no_warning(tiny_run):
    _, output = tiny_run
    assert "undertrained" not in output


def test_progress_is_plain_and_whole_when_not_a_terminal(tiny_run):
    """No bar drawn at 80 columns into a log: the last progress line is printed once, in full."""
    _, output = tiny_run
    assert "━" not in output
    lines = [line for line in output.splitlines() if line.startswith("train: step 8/8")]
    assert len(lines) == 1 and re.fullmatch(
        r"train: step 8/8  loss \d\.\d{4}  lr \S+  \d+ img/s  elapsed \d+:\d\d  ETA 0:00", lines[0]), lines


def test_the_printed_config_and_config_yaml_leave_out_the_other_backbone(tiny_run):
    run, output = tiny_run
    for text in (output, (run / "config.yaml").read_text()):
        assert "base_channels: 8" in text
        assert "patch_size" not in text and "hidden_size" not in text and "depth:" not in text


@pytest.mark.parametrize("preset", ["unet-small", "dit-small"])
def test_used_settings_read_back_to_the_same_config(preset):
    cfg = load_config(preset)
    assert validate(config_from_dict(used_settings(cfg))) == cfg
    other = "patch_size" if cfg.model.type == "unet" else "base_channels"
    assert other not in used_settings(cfg)["model"]


@pytest.mark.parametrize("grid, max_steps, stop_reason", [("final.png", 3, "reached step 3"),
                                                           ("epoch_001.png", None, "interrupted")])
def test_ctrl_c_during_a_slow_preview_skips_it_at_once_and_keeps_last(monkeypatch, data_dir, tmp_path, grid,
                                                                      max_steps, stop_reason):
    """On a busy machine the preview after the last step took 45 s, and Ctrl-C waited for it and then wrote it."""
    import tinydiff_cli.training.trainer as training

    finished = []

    def slow_preview(pipe, path, cfg):
        if path.name == grid:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the grid is sampled
            time.sleep(30)
            finished.append(path)  # reached only if the Ctrl-C did not cut the preview short
        return None

    monkeypatch.setattr(training, "save_sample_grid", slow_preview)
    cfg = load_config("unet-small", overrides=[
        "model.base_channels=8", "model.channel_mults=[1, 2]", "model.attn_resolutions=[]", "model.groups=4",
        "diffusion.timesteps=50", "train.batch_size=32", "train.epochs=2", "train.eval_images=32",
        f"data.data_dir={data_dir}"] + ([f"train.max_steps={max_steps}"] if max_steps else []))
    logged = []
    trainer = training.Trainer(cfg, tmp_path / "run", "cpu")
    trainer.reporter.log = logged.append
    result = trainer.run()
    assert finished == []  # the preview was cut short at once, not waited for (no clock to race)
    assert result.stop_reason.startswith(stop_reason)
    assert not (tmp_path / "run" / "samples" / grid).exists()
    assert any("skipped" in line for line in logged), logged
    saved = json.loads((tmp_path / "run" / "last.json").read_text())
    assert saved["step"] == result.step == (max_steps or 8)


def test_slow_sampling_reads_in_seconds_per_image():
    assert format_rate(100, 2.0) == "50.0 images/s"
    assert format_rate(3, 12.0) == "4.0 s/image"  # not "0.2 images/s" rounded to nothing


def test_outputs_are_named_with_their_full_path(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sample", "--checkpoint", str(run), "--n", "2", "--ddim", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"grid -> {tmp_path / 'samples.png'}" in " ".join(result.output.split())
