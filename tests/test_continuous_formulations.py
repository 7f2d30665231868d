"""EDM and flow matching end to end through the CLI on tiny data: train, sample with every sampler they accept,
export, and the one-line refusals."""
import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app
from tinydiff_cli.sampling.pipeline import Pipeline

runner = CliRunner()
OBJECTIVES = ("edm", "flow")


@pytest.fixture(scope="module", params=OBJECTIVES)
def continuous_run(request, tmp_path_factory):
    from conftest import TINY_PRESET, make_mnist

    root = tmp_path_factory.mktemp(request.param)
    data = make_mnist(root / "data")
    (root / "tiny.yaml").write_text(TINY_PRESET)
    out = root / "runs" / request.param
    result = runner.invoke(app, ["train", "--preset", str(root / "tiny.yaml"), "--data-dir", str(data), "--out", str(out),
                                 "--device", "cpu", "--epochs", "5", "--set", f"diffusion.objective={request.param}",
                                 "--set", "train.lr=3e-3", "--set", "train.log_every=10",
                                 "--set", "diffusion.min_snr_gamma=0"])
    assert result.exit_code == 0, result.output
    return request.param, out, data


def test_training_lowers_the_loss(continuous_run):
    objective, out, _ = continuous_run
    rows = [r for r in csv.DictReader(open(out / "loss.csv")) if r["train_loss"]]
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert len(rows) == 4 and last < 0.8 * first, (objective, first, last)
    pipe = Pipeline.from_checkpoint(out)
    assert pipe.formulation.name == objective and not pipe.formulation.discrete and pipe.T is None


def sample(out, tmp_path, *flags):
    npz = tmp_path / "s.npz"
    result = runner.invoke(app, ["sample", "--checkpoint", str(out), "--digit", "all", "--n", "6", "--w", "1",
                                 "--device", "cpu", "--out", str(tmp_path / "g.png"), "--npz", str(npz), *flags])
    assert result.exit_code == 0, result.output
    return np.load(npz)["arr_0"], result.output


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "heun"])
def test_every_sampler_draws_from_a_continuous_model(continuous_run, tmp_path, sampler):
    _, out, _ = continuous_run
    images, output = sample(out, tmp_path, "--sampler", sampler, "--steps", "4")
    assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 5  # not a blank grid
    assert f"{sampler.upper()}-4" in output


def test_the_ode_solvers_agree_as_their_steps_grow(continuous_run):
    """DDIM, DPM-Solver++(2M) and Heun solve the same probability-flow ODE: from the same noise, at many steps, they
    must reach nearly the same images on a real (tiny) network, and at few steps differ more."""
    _, out, _ = continuous_run
    pipe = Pipeline.from_checkpoint(out)
    labels = pipe.labels("all", 4)
    draw = lambda name, steps: pipe.sample(labels, sampler=name, steps=steps, w=0.0, seed=3)  # noqa: E731
    reference = draw("dpm++2m", 60)
    far = (draw("ddim", 3) - reference).abs().mean().item()
    near = {"heun": (draw("heun", 20) - reference).abs().mean().item(),
            "ddim": (draw("ddim", 40) - reference).abs().mean().item()}
    assert near["heun"] < 0.02 and near["ddim"] < 0.05 and far > 2 * max(near.values()), (near, far)


def test_ddpm_and_distill_refuse_a_continuous_model_with_one_line(continuous_run, tmp_path):
    objective, out, _ = continuous_run
    result = runner.invoke(app, ["sample", "--checkpoint", str(out), "--sampler", "ddpm", "--out", str(tmp_path / "g.png")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"this model is '{objective}'; use ddim, heun or dpm++2m" in result.output
    result = runner.invoke(app, ["distill", "--checkpoint", str(out), "--out", str(tmp_path / "d"), "--device", "cpu"])
    assert result.exit_code != 0 and "discrete schedule" in result.output and "Traceback" not in result.output


def test_an_exported_continuous_model_samples_the_same_pixels(continuous_run, tmp_path):
    _, out, _ = continuous_run
    exported = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["export", "--checkpoint", str(out), "--format", "safetensors", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    direct, _ = sample(out, tmp_path, "--steps", "5")
    again, _ = sample(exported, tmp_path, "--steps", "5")
    np.testing.assert_array_equal(direct, again)


def test_pt2_export_of_a_continuous_model_matches_the_network(continuous_run, tmp_path):
    _, out, _ = continuous_run
    path = tmp_path / "model.pt2"
    result = runner.invoke(app, ["export", "--checkpoint", str(out), "--format", "pt2", "--out", str(path)])
    assert result.exit_code == 0, result.output
    pipe = Pipeline.from_checkpoint(out)
    program = torch.export.load(str(path)).module()
    x, t, labels = torch.randn(3, 1, 28, 28), pipe.formulation.c_noise(torch.tensor([0.1, 1.0, 10.0])), torch.tensor([1, 5, 10])
    with torch.no_grad():
        torch.testing.assert_close(program(x, t, labels), pipe.model(x, t, labels), atol=1e-5, rtol=1e-5)
