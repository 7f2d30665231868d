"""The CLI end to end on tiny synthetic data: real commands, real files."""
import json
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from tinydiff_cli import __version__
from tinydiff_cli.cli.main import app, normalize_argv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv([str(a) for a in args]))


@pytest.fixture
def trained_run(tiny_run):
    return tiny_run


def tinydiff_command() -> list[str]:
    """The installed console script when there is one (CI), else the module."""
    script = Path(sys.executable).parent / "tinydiff"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tinydiff_cli"]


def test_version_and_help_from_the_installed_command():
    exe = tinydiff_command()
    assert subprocess.run(exe + ["--version"], capture_output=True, text=True).stdout.strip() == f"tinydiff {__version__}"
    help_text = subprocess.run(exe + ["--help"], capture_output=True, text=True).stdout
    assert "train" in help_text and "sample" in help_text


@pytest.mark.parametrize("command", [["eval"], ["compare"], ["sample"], ["visualize", "app"], ["train"]])
def test_flags_render_as_flags_in_help(command):
    """A flag takes no value, so --help must not show one (Typer 0.29 printed "<bool>" after each)."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    flags = [line for line in result.output.splitlines() if "--help" in line or "--json" in line or "--no-browser" in line
             or "--raw-weights" in line or "--eval" in line]
    assert flags and not any("<bool>" in line or "BOOLEAN" in line for line in flags), flags


def test_train_help_names_every_preset():
    from tinydiff_cli.config import available_presets

    result = runner.invoke(app, ["train", "--help"], terminal_width=400)
    help_text = " ".join(result.output.split())
    assert all(f"{name}," in help_text or f"{name})" in help_text for name in available_presets()), help_text


def test_presets_resolve_from_any_directory(tmp_path):
    """`--preset unet-small` must work after a non-editable install, far from the source tree."""
    result = subprocess.run(tinydiff_command() + ["train", "--preset", "unet-small", "--data-dir", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "MNIST not found" in result.stderr and "Traceback" not in result.stderr


def test_train_writes_checkpoints_logs_and_grids(trained_run):
    run, output = trained_run
    assert "device: cpu" in output and "timesteps: 50" in output  # device and resolved config printed
    meta = json.loads((run / "last.json").read_text())
    assert meta["step"] == 8 and meta["epoch"] == 1
    assert (run / "last.safetensors").stat().st_size > 0
    assert (run / "ckpt_0000004.json").exists() and (run / "ckpt_0000008.json").exists()
    assert "timesteps: 50" in (run / "config.yaml").read_text()
    rows = (run / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,train_loss,eval_loss,lr,images_per_s,elapsed_s,fid,fid_n,class_acc"
    assert len(rows) == 1 + 4 + 1  # 4 train rows (every 2 steps) and one eval row
    assert rows[-1].split(",")[3] != ""  # eval loss at the end of the epoch
    assert iio.imread(run / "loss.png").ndim == 3
    grid = iio.imread(run / "samples" / "epoch_001.png")
    assert grid.shape == ((1 * 30 + 2) * 2, (10 * 30 + 2) * 2)  # 1 row x 10 classes, 2x upscaled


def test_sample_one_digit_writes_grid_and_npz(trained_run, tmp_path):
    run, _ = trained_run
    out, npz = tmp_path / "g.png", tmp_path / "s.npz"
    result = invoke("sample", "--checkpoint", run, "--digit", "3", "--n", "9", "--ddim", "5", "--w", "1.0",
                    "--out", out, "--npz", npz, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert re.search(r"\d\.\d (images/s|s/image)", result.output)  # s/image when slower than one a second (a busy CPU)
    arrays = np.load(npz)
    assert arrays["arr_0"].shape == (9, 28, 28, 1) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].dtype == np.int64 and set(arrays["arr_1"]) == {3}
    assert iio.imread(out).shape == ((3 * 30 + 2) * 2, (3 * 30 + 2) * 2)


def test_sampler_flags(trained_run, tmp_path):
    run, _ = trained_run
    common = ["sample", "--checkpoint", run, "--n", "4", "--seed", "2", "--device", "cpu", "--out", tmp_path / "g.png"]
    by_ddim = invoke(*common, "--ddim", "5", "--npz", tmp_path / "a.npz")
    assert by_ddim.exit_code == 0, by_ddim.output
    assert f"checkpoint {run / 'last.json'} (step 8, EMA weights); DDIM-5 (eta=0), w=1, device cpu" in by_ddim.output
    by_name = invoke(*common, "--sampler", "ddim", "--steps", "5", "--npz", tmp_path / "b.npz")
    assert by_name.exit_code == 0, by_name.output
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
    for flags, message in ((["--ddim", "5", "--steps", "3"], "--ddim N is short for --sampler ddim --steps N"),
                           (["--sampler", "euler"], "unknown sampler 'euler'; choose one of ddpm, ddim"),
                           (["--sampler", "ddpm", "--steps", "10"], "ddpm always runs all T=50 steps"),
                           (["--sampler", "ddim", "--steps", "51"], "--steps must be between 1 and the model's T=50")):
        result = invoke(*common, *flags)
        assert result.exit_code == 2 and message in " ".join(result.output.replace("│", " ").split()), result.output


def test_sample_all_digits_puts_one_class_per_column_with_the_default_sampler(trained_run, tmp_path):
    run, _ = trained_run
    npz = tmp_path / "s.npz"
    result = invoke("sample", "--checkpoint", run / "last.json", "--n", "20", "--out", tmp_path / "g.png",
                    "--npz", npz, "--device", "cpu", "--batch-size", "7")
    assert result.exit_code == 0, result.output
    assert "DPM++2M-10" in result.output  # the default, never DDPM over all T
    np.testing.assert_array_equal(np.load(npz)["arr_1"], np.arange(20) % 10)
    assert iio.imread(tmp_path / "g.png").shape[1] == (10 * 30 + 2) * 2


def test_sample_is_reproducible_with_a_seed(trained_run, tmp_path):
    run, _ = trained_run
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        result = invoke("sample", "--checkpoint", run, "--n", "4", "--ddim", "3", "--eta", "1", "--seed", seed,
                        "--out", tmp_path / f"{name}.png", "--npz", tmp_path / f"{name}.npz", "--device", "cpu")
        assert result.exit_code == 0, result.output
    images = {name: np.load(tmp_path / f"{name}.npz")["arr_0"] for name in "abc"}
    np.testing.assert_array_equal(images["a"], images["b"])
    assert not np.array_equal(images["a"], images["c"])



def sample_six(run: Path, out: Path, flags: list[str]) -> tuple[np.ndarray, str]:
    """`tinydiff sample --n 6` with `flags`: the images (from its .npz) and what it printed."""
    result = invoke("sample", "--checkpoint", run, "--n", "6", "--out", out.with_suffix(".png"),
                    "--npz", out.with_suffix(".npz"), "--device", "cpu", *flags)
    assert result.exit_code == 0, result.output
    return np.load(out.with_suffix(".npz"))["arr_0"], result.output


def test_without_w_a_model_samples_at_its_own_guidance_weight(tiny_preset, data_dir, tmp_path):
    """train.sample_w is the model's guidance weight: sample, eval and compare default to it; --w overrides it."""
    run = tmp_path / "run"
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--max-steps", "2",
                    "--device", "cpu", "--set", "train.sample_w=3")
    assert result.exit_code == 0, result.output
    images = {}
    for name, flags in (("default", []), ("w3", ["--w", "3"]), ("w1", ["--w", "1"])):
        images[name], output = sample_six(run, tmp_path / name, flags)
        assert f"w={3 if name != 'w1' else 1}," in output
    np.testing.assert_array_equal(images["default"], images["w3"])
    assert not np.array_equal(images["default"], images["w1"])
    for w_flags, expected in (([], 3.0), (["--w", "0.5"], 0.5)):
        result = invoke("eval", "--checkpoint", run, "--n", "10", "--json", "--device", "cpu", *w_flags)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout[result.stdout.index("{"):])["extra"]["w"] == expected


def test_guidance_interval_is_the_models_own_unless_a_flag_says_otherwise(tiny_preset, data_dir, tmp_path):
    """train.sample_w_max_sigma: sample and eval guide only at sigma_t <= it by default; --w-max-sigma overrides it
    (inf: every step)."""
    run = tmp_path / "run"
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--max-steps", "2",
                    "--device", "cpu", "--set", "train.sample_w=3", "--set", "train.sample_w_max_sigma=1")
    assert result.exit_code == 0, result.output
    images = {}
    for name, flags in (("default", []), ("one", ["--w-max-sigma", "1"]), ("everywhere", ["--w-max-sigma", "inf"])):
        images[name], output = sample_six(run, tmp_path / name, flags)
        assert ("w=3 at sigma <= 1," if name != "everywhere" else "w=3,") in output
    np.testing.assert_array_equal(images["default"], images["one"])
    assert not np.array_equal(images["default"], images["everywhere"])
    for flags, expected in (([], 1.0), (["--w-max-sigma", "inf"], None), (["--w-max-sigma", "2.5"], 2.5)):
        result = invoke("eval", "--checkpoint", run, "--n", "10", "--json", "--device", "cpu", *flags)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout[result.stdout.index("{"):])["extra"]["w_max_sigma"] == expected

def test_typed_flags_are_not_parsed_as_yaml(tiny_preset, tmp_path):
    """A data folder named like a YAML number stays a path."""
    from conftest import make_mnist

    data = make_mnist(tmp_path / "2024")
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data, "--out", tmp_path / "run", "--max-steps", "1",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["sample", "--checkpoint", "{run}", "--digit", "12"], "--digit must be 0..9"),
    (["sample", "--checkpoint", "{run}", "--ddim", "0"], "--ddim must be between 1 and"),
    (["sample", "--checkpoint", "{tmp}/nothing"], "no checkpoint at"),
    (["train", "--preset", "unet-huge", "--out", "{tmp}/r"], "unknown preset 'unet-huge'"),
    (["train", "--set", "train.bogus=1", "--out", "{tmp}/r"], "unknown setting 'train.bogus'"),
    (["train", "--data-dir", "{tmp}/empty", "--out", "{tmp}/r"], "MNIST not found in"),
    (["train", "--out", "{run}"], "already holds a run"),
    (["train", "--resume", "--out", "{tmp}/none"], "nothing to resume at"),
    (["train", "--resume", "{run}", "--dataset", "fashion-mnist"], "would change data.dataset: mnist -> fashion-mnist"),
    (["train", "--resume", "{run}", "--set", "model.base_channels=16"], "would change model.base_channels: 8 -> 16"),
    (["train", "--resume", "{run}", "--set", "diffusion.objective=v"], "diffusion.objective: eps -> v"),
    (["train", "--device", "tpu", "--out", "{tmp}/r"], "unknown device 'tpu'"),
    (["sample", "--checkpoint", "{run}", "--out", "{tmp}", "--n", "2", "--ddim", "1"], "is a folder"),
    (["eval", "--checkpoint", "{run}", "--n", "1"], "at least 2"),
    (["sample", "--checkpoint", "{run}", "--w-max-sigma", "0"], "--w-max-sigma must be positive"),
    (["train", "--set", "train.sample_w_max_sigma=-1", "--out", "{tmp}/r"], "train.sample_w_max_sigma must be positive"),
    (["compare", "--checkpoint", "{run}", "--steps", "5", "--show", "0", "--no-eval"], "--show at least 1"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(trained_run, tmp_path, args, message):
    run, _ = trained_run
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no Python error escaped
    assert (run / "last.json").exists()  # nothing written so far is lost


def test_normalize_argv_gives_a_bare_resume_its_default():
    assert normalize_argv(["train", "--resume"]) == ["train", "--resume", "last"]
    assert normalize_argv(["train", "--resume", "--lr", "1"]) == ["train", "--resume", "last", "--lr", "1"]
    assert normalize_argv(["train", "--resume", "runs/x"]) == ["train", "--resume", "runs/x"]


def test_default_run_folders_tell_datasets_apart(tmp_path, monkeypatch):
    from tinydiff_cli.cli.train import default_run_dir, folder_to_resume
    from tinydiff_cli.config import load_config

    assert default_run_dir(load_config("unet-small")) == Path("runs/unet-small")
    fashion = load_config("unet-small", overrides=["data.dataset=fashion-mnist"])
    assert default_run_dir(fashion) == Path("runs/unet-small-on-fashion-mnist")
    assert default_run_dir(load_config("unet-small-fashion")) == Path("runs/unet-small-fashion")  # its own data
    mnist = load_config("unet-small-fashion", overrides=["data.dataset=mnist"])
    assert default_run_dir(mnist) == Path("runs/unet-small-fashion-on-mnist")  # not the same folder as above
    # a bare --resume finds a run that an older tinydiff named runs/<preset>-<dataset>, unless the new name has one
    monkeypatch.chdir(tmp_path)
    assert folder_to_resume(fashion) == Path("runs/unet-small-on-fashion-mnist")
    (tmp_path / "runs" / "unet-small-fashion-mnist").mkdir(parents=True)
    (tmp_path / "runs" / "unet-small-fashion-mnist" / "last.json").write_text("{}")
    assert folder_to_resume(fashion) == Path("runs/unet-small-fashion-mnist")
    (tmp_path / "runs" / "unet-small-on-fashion-mnist").mkdir()
    (tmp_path / "runs" / "unet-small-on-fashion-mnist" / "last.json").write_text("{}")
    assert folder_to_resume(fashion) == Path("runs/unet-small-on-fashion-mnist")
    assert folder_to_resume(load_config("unet-small")) == Path("runs/unet-small")


def test_resume_trains_longer_with_more_minutes_or_a_new_end(tiny_preset, data_dir, tmp_path):
    from tinydiff_cli.cli.train import resolve_run

    run = tmp_path / "run"
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--max-steps", "2",
                    "--set", "train.max_minutes=0.001", "--device", "cpu")
    assert result.exit_code == 0, result.output
    elapsed = json.loads((run / "last.json").read_text())["elapsed_s"]
    cfg, _, _ = resolve_run(str(tiny_preset), [], {"train.max_minutes": 2.0}, None, str(run))
    assert cfg.train.max_minutes == pytest.approx(elapsed / 60 + 2.0, abs=0.005)  # two more minutes (to 0.01 min)
    cfg, _, _ = resolve_run(str(tiny_preset), [], {"train.max_steps": 4}, None, str(run))
    assert cfg.train.max_steps == 4 and cfg.train.max_minutes is None  # the old budget would stop it at once
    result = invoke("train", "--resume", run, "--device", "cpu")  # nothing left: the message says what to do
    assert result.exit_code == 0 and "to train longer, resume with --max-minutes M" in result.output
    result = invoke("train", "--resume", run, "--max-steps", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "last.json").read_text())["step"] == 4
