"""What `train` tells its user: the undertrained warning, an honest summary, a progress line that is never cut,
a Ctrl-C that skips a slow preview, and where output files land (a newcomer's first hour, issue 19)."""
import json
import os
import re
import signal
import time

import pytest
from typer.testing import CliRunner

from tinydiff_cli.cli import app, normalize_argv
from tinydiff_cli.config import config_from_dict, load_config, used_settings, validate
from tinydiff_cli.ui import format_rate

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv([str(a) for a in args]))


def test_a_budget_that_ends_before_one_epoch_warns_and_its_advice_works(tiny_preset, data_dir, tmp_path):
    run = tmp_path / "run"
    # 256 images at batch 32 = 8 steps per epoch; a budget of 6 ms ends after the first step
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--device", "cpu",
                    "--set", "train.max_minutes=0.0001")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: undertrained. The time budget ended after 1 step, 0.12 of one epoch (this preset plans 1)" in text
    assert re.search(r"at \d+ images/s on average", text)
    advice = re.search(r"To reach one epoch at this speed: (tinydiff train --resume \S+ --max-minutes (\d+))", text)
    assert advice and int(advice.group(2)) >= 1, text
    # the summary lists only what exists: one step never fills a logging window, so there is no loss.png
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
    import tinydiff_cli.training as training

    def slow_preview(pipe, path, cfg):
        if path.name == grid:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the grid is sampled
            time.sleep(30)
        return None

    monkeypatch.setattr(training, "save_sample_grid", slow_preview)
    cfg = load_config("unet-small", overrides=[
        "model.base_channels=8", "model.channel_mults=[1, 2]", "model.attn_resolutions=[]", "model.groups=4",
        "diffusion.timesteps=50", "train.batch_size=32", "train.epochs=2", "train.eval_images=32",
        f"data.data_dir={data_dir}"] + ([f"train.max_steps={max_steps}"] if max_steps else []))
    logged = []
    trainer = training.Trainer(cfg, tmp_path / "run", "cpu")
    trainer.reporter.log = logged.append
    start = time.perf_counter()
    result = trainer.run()
    assert time.perf_counter() - start < 20  # not the 30 s of the preview
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
