"""Parts of the product that had no test (issue 38), each through the command line on tiny synthetic data: label
dropout, --raw-weights, --precision bf16, Fashion-MNIST, compare --w-max-sigma, a resume that is exact with previews
and evals on, and a DiT trained, sampled and exported."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY_PRESET, make_mnist, synthetic_digits
from tinydiff_cli.cli.main import app, normalize_argv
from tinydiff_cli.sampling.pipeline import Pipeline

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, normalize_argv([str(a) for a in args]))
    assert result.exit_code == 0, result.output
    return result


def one_line(result) -> str:
    return " ".join(result.output.replace("│", " ").split())


def train(preset, data_dir, out, *flags):
    return invoke("train", "--preset", preset, "--data-dir", data_dir, "--out", out, "--device", "cpu", *flags)


# ---- label dropout -------------------------------------------------------------------------------------------------
def class_embedding_second_moment(run) -> torch.Tensor:
    """Adam's running mean of squared gradients for the class embedding (11 rows: 10 classes and the null class),
    per row: zero exactly where a row never received a gradient."""
    tensors = load_file(str(run / "last.safetensors"))
    [name] = [k for k, v in tensors.items() if k.endswith("exp_avg_sq") and v.shape == tensors["model.class_emb.weight"].shape]
    return tensors[name].abs().sum(1)


def test_label_dropout_p_uncond_trains_the_null_class_with_the_share_it_says(tiny_preset, data_dir, tmp_path):
    never = tmp_path / "never"
    train(tiny_preset, data_dir, never, "--max-steps", "3", "--set", "diffusion.p_uncond=0")
    moment = class_embedding_second_moment(never)
    assert (moment[:10] > 0).all() and moment[10] == 0  # no label dropped: the null class never trained

    # 99% dropped: the 64 rows of steps 2 and 3 (step 1's gradients stop at the zero-initialised output layer) keep
    # about 0.6 of a label; P(5 or more classes kept) < 1e-3
    mostly = tmp_path / "mostly"
    train(tiny_preset, data_dir, mostly, "--max-steps", "3", "--set", "diffusion.p_uncond=0.99")
    moment = class_embedding_second_moment(mostly)
    assert moment[10] > 0 and (moment[:10] == 0).sum() >= 6

    half = tmp_path / "half"
    train(tiny_preset, data_dir, half, "--max-steps", "3", "--set", "diffusion.p_uncond=0.5")
    moment = class_embedding_second_moment(half)
    assert moment[10] > 0 and (moment[:10] > 0).sum() >= 5  # both kinds of rows train


# ---- sampling flags: --raw-weights, --precision bf16 ----------------------------------------------------------------
def npz_images(path):
    return np.load(path)["arr_0"]


def test_raw_weights_sample_the_training_weights(tiny_run, tmp_path):
    from tinydiff_cli.data.datasets import to_uint8

    run, _ = tiny_run
    common = ["sample", "--checkpoint", run, "--n", "4", "--ddim", "3", "--seed", "2", "--device", "cpu"]
    raw = invoke(*common, "--raw-weights", "--out", tmp_path / "r.png", "--npz", tmp_path / "r.npz")
    assert "raw weights" in one_line(raw)
    invoke(*common, "--out", tmp_path / "e.png", "--npz", tmp_path / "e.npz")
    pipe = Pipeline.from_checkpoint(run, weights="raw")
    expected = to_uint8(pipe.sample(pipe.labels("all", 4), sampler="ddim", steps=3, seed=2)).numpy()
    np.testing.assert_array_equal(npz_images(tmp_path / "r.npz"), expected)
    assert not np.array_equal(npz_images(tmp_path / "r.npz"), npz_images(tmp_path / "e.npz"))


def test_precision_bf16_through_the_cli(tiny_run, tiny_preset, data_dir, tmp_path):
    from tinydiff_cli.runtime.precision import cpu_has_native_bf16

    run, _ = tiny_run
    common = ["sample", "--checkpoint", run, "--n", "4", "--ddim", "3", "--seed", "2", "--device", "cpu"]
    bf16 = runner.invoke(app, [str(a) for a in common + ["--precision", "bf16", "--out", tmp_path / "b.png",
                                                         "--npz", tmp_path / "b.npz"]])
    trained = runner.invoke(app, ["train", "--preset", str(tiny_preset), "--data-dir", str(data_dir), "--out",
                                  str(tmp_path / "run"), "--device", "cpu", "--max-steps", "2", "--precision", "bf16"])
    if not cpu_has_native_bf16():  # refused, before anything is written
        for result in (bf16, trained):
            assert result.exit_code == 2 and "no native bfloat16" in one_line(result), result.output
        assert not (tmp_path / "b.png").exists() and not (tmp_path / "run").exists()
        return
    assert bf16.exit_code == 0 and trained.exit_code == 0, bf16.output + trained.output
    invoke(*common, "--precision", "fp32", "--out", tmp_path / "f.png", "--npz", tmp_path / "f.npz")
    difference = np.abs(npz_images(tmp_path / "b.npz").astype(int) - npz_images(tmp_path / "f.npz").astype(int))
    assert 0 < difference.mean() < 8  # bf16 arithmetic: the same images up to rounding, not identical ones
    assert json.loads((tmp_path / "run" / "last.json").read_text())["config"]["train"]["precision"] == "bf16"


# ---- Fashion-MNIST -------------------------------------------------------------------------------------------------
def test_fashion_mnist_loads_from_its_own_folder_with_its_class_names(tiny_preset, tmp_path):
    data = make_mnist(tmp_path / "data", folder="FashionMNIST")
    run = tmp_path / "run"
    result = train(tiny_preset, data, run, "--dataset", "fashion-mnist", "--max-steps", "1")
    assert "256 training images" in one_line(result)
    meta = json.loads((run / "last.json").read_text())
    assert meta["config"]["data"]["dataset"] == "fashion-mnist"
    assert meta["data"]["class_names"][:2] == ["T-shirt/top", "Trouser"] and len(meta["data"]["class_names"]) == 10
    # the images are the IDX file's pixels: its test split scores FID 0 against itself
    from tinydiff_cli.data.mnist import load_split

    test = load_split("fashion-mnist", data, train=False)
    np.testing.assert_array_equal(test.images[:, 0].numpy(), synthetic_digits(64, seed=1)[0])
    with pytest.raises(Exception, match="FashionMNIST|Fashion-MNIST|fashion"):
        load_split("fashion-mnist", make_mnist(tmp_path / "only-mnist"), train=False)  # MNIST/ is not FashionMNIST/


# ---- compare --w-max-sigma ------------------------------------------------------------------------------------------
def linear_sigmas(T: int) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar) / alpha_bar) of the linear schedule (betas 1e-4..0.02, scaled by 1000 / T)."""
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    alpha_bar = np.cumprod(1 - betas)
    return np.sqrt((1 - alpha_bar) / alpha_bar)


def test_compare_guides_only_inside_the_interval_it_is_given(tiny_run, tmp_path):
    run, _ = tiny_run
    sigmas = linear_sigmas(50)
    grid = [49, 39, 29, 19, 9]  # DDIM-5 on T = 50, trailing spacing
    max_sigma = (sigmas[19] + sigmas[29]) / 2  # t = 19 and 9 guided
    result = invoke("compare", "--checkpoint", run, "--samplers", "ddim", "--steps", "5", "--n", "4", "--w", "1",
                    "--w-max-sigma", f"{max_sigma:.6f}", "--no-eval", "--json", "--out", tmp_path / "c.png",
                    "--device", "cpu")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    ddpm, ddim = report["samplers"]
    assert ddim["network_evaluations"] == 5 + sum(sigmas[t] <= max_sigma for t in grid) == 7
    assert ddpm["network_evaluations"] == 50 + int((sigmas <= max_sigma).sum())
    everywhere = invoke("compare", "--checkpoint", run, "--samplers", "ddim", "--steps", "5", "--n", "4", "--w", "1",
                        "--w-max-sigma", "inf", "--no-eval", "--json", "--out", tmp_path / "d.png", "--device", "cpu")
    report = json.loads(everywhere.stdout[everywhere.stdout.index("{"):])
    assert [row["network_evaluations"] for row in report["samplers"]] == [100, 10]


# ---- resume ----------------------------------------------------------------------------------------------------------
def test_a_resumed_run_is_the_uninterrupted_run_with_previews_and_evals_on(tiny_preset, data_dir, tmp_path):
    """Sample grids and FID evals draw random numbers too; they must not move the training's generators. (A constant
    learning rate, so that the first half's --max-steps 4 does not shorten its schedule.)"""
    flags = ["--epochs", "2", "--batch-size", "64", "--eval-every", "4", "--set", "train.eval_samples=10",
             "--set", "train.sample_rows=1", "--set", "train.lr_schedule=constant"]  # 4 steps an epoch
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train(tiny_preset, data_dir, whole, *flags)
    train(tiny_preset, data_dir, halves, *flags, "--max-steps", "4")  # one epoch: an eval and a preview, then stop
    assert (halves / "samples" / "epoch_001.png").exists()
    invoke("train", "--resume", halves, "--max-steps", "8", "--device", "cpu")
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(halves / "last.safetensors"))
    assert json.loads((halves / "last.json").read_text())["step"] == 8
    for name in a:  # weights, EMA and optimizer state, bit for bit
        if not name.startswith("rng"):
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    fid = lambda run: [line.split(",")[7] for line in (run / "loss.csv").read_text().splitlines()[1:]  # noqa: E731
                       if line.split(",")[7]]
    assert fid(halves) == fid(whole) and len(fid(whole)) == 2  # steps 4 and 8: the same scores


# ---- DiT --------------------------------------------------------------------------------------------------------------
DIT_PRESET = """
model:
  type: dit
  patch_size: 7
  hidden_size: 32
  depth: 2
  heads: 2
""" + TINY_PRESET[TINY_PRESET.index("diffusion:"):]  # the tiny preset's diffusion and train sections


def test_a_dit_trains_samples_and_exports_through_the_cli(data_dir, tmp_path):
    from tinydiff_cli.data.datasets import to_uint8
    from tinydiff_cli.sampling.export import example_inputs

    preset = tmp_path / "dit.yaml"
    preset.write_text(DIT_PRESET)
    run = tmp_path / "run"
    train(preset, data_dir, run)
    meta = json.loads((run / "last.json").read_text())
    assert meta["step"] == 8 and meta["config"]["model"]["type"] == "dit"
    pipe = Pipeline.from_checkpoint(run)
    assert type(pipe.model).__name__ == "DiT" and not all(torch.all(p == 0) for p in pipe.model.parameters())
    invoke("sample", "--checkpoint", run, "--n", "4", "--ddim", "3", "--seed", "1", "--out", tmp_path / "g.png",
           "--npz", tmp_path / "s.npz", "--device", "cpu")
    expected = to_uint8(pipe.sample(pipe.labels("all", 4), sampler="ddim", steps=3, seed=1)).numpy()
    np.testing.assert_array_equal(npz_images(tmp_path / "s.npz"), expected)

    exported = tmp_path / "dit.safetensors"
    invoke("export", "--checkpoint", run, "--out", exported)
    invoke("sample", "--checkpoint", exported, "--n", "4", "--ddim", "3", "--seed", "1", "--out", tmp_path / "h.png",
           "--npz", tmp_path / "t.npz", "--device", "cpu")
    np.testing.assert_array_equal(npz_images(tmp_path / "t.npz"), expected)
    pt2 = tmp_path / "dit.pt2"
    invoke("export", "--checkpoint", run, "--format", "pt2", "--out", pt2)
    x, t, labels = example_inputs(pipe, 5, seed=3)
    out = pipe.model(x, t, labels)
    assert out.abs().max() > 1e-3  # trained past its zero-initialised output layer
    torch.testing.assert_close(torch.export.load(str(pt2)).module()(x, t, labels), out, atol=1e-4, rtol=0)
    assert math.isfinite(float(meta["train_loss"]))
