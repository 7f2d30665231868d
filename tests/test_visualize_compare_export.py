"""visualize, compare and export end to end on a tiny trained model."""
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tinydiff_cli.cli import app
from tinydiff_cli.export import example_inputs
from tinydiff_cli.pipeline import Pipeline

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run[0]


def test_visualize_forward_png(data_dir, tmp_path):
    out = tmp_path / "forward.png"
    invoke("visualize", "forward", "--data-dir", data_dir, "--n", "3", "--schedule", "cosine", "--out", out)
    assert iio.imread(out).shape[:2] == (330, 780)  # 3 rows x 8 labelled columns at 0.9 in per cell, 100 dpi


def test_visualize_schedule_png(tmp_path):
    out = tmp_path / "s.png"
    invoke("visualize", "schedule", "--out", out)
    assert iio.imread(out).shape[:2] == (400, 1000)


def test_visualize_denoise_gif_and_strip(run_dir, tmp_path):
    result = invoke("visualize", "denoise", "--checkpoint", run_dir, "--digit", "4", "--n", "2", "--ddim", "5",
                    "--out", tmp_path / "den")
    frames = iio.imread(tmp_path / "den.gif", index=None)
    assert frames.shape[0] == 5 + 1  # one frame per step, then the result (held, merged by the GIF writer)
    assert frames.shape[1:3] == ((2 * 29 - 1) * 4, 57 * 4)  # 2 samples stacked; x_t | x_0 side by side, 4x
    assert iio.imread(tmp_path / "den.png").ndim == 3
    assert "6 frames" in result.output


def test_trajectory_ends_on_the_same_image_as_sample(run_dir):
    pipe = Pipeline.from_checkpoint(run_dir)
    labels = pipe.labels(7, 3)
    traj = pipe.trajectory(labels, sampler="ddim", steps=4, w=2.0, seed=11)
    assert traj.x.shape == (5, 3, 1, 28, 28) and traj.x0.shape == (4, 3, 1, 28, 28)
    assert traj.timesteps == pipe.formulation.timesteps(4) == [49, 37, 24, 11]
    assert traj.alpha_bar[0] == pytest.approx(pipe.schedule.alpha_bar[49].item())
    final = pipe.sample(labels, sampler="ddim", steps=4, w=2.0, seed=11)
    torch.testing.assert_close(traj.x[-1], final)
    ddpm = pipe.trajectory(labels[:1], sampler="ddpm", seed=11, w=0.0)
    assert ddpm.timesteps == list(range(49, -1, -1))
    torch.testing.assert_close(ddpm.x[-1], pipe.sample(labels[:1], sampler="ddpm", seed=11, w=0.0))


def test_compare_json_and_grid(run_dir, tmp_path):
    result = invoke("compare", "--checkpoint", run_dir, "--steps", "2,5", "--n", "6", "--show", "4",
                    "--out", tmp_path / "c.png", "--plot", tmp_path / "f.png", "--json", "--device", "cpu")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    names = [row["sampler"] for row in report["samplers"]]
    assert names == ["DDPM-50", "DDIM-2", "DDIM-5", "DPM++2M-2", "DPM++2M-5", "HEUN-2", "HEUN-5"]  # every sampler
    # w = 1: two passes per denoiser call; Heun calls it 2N - 1 times
    assert [row["network_evaluations"] for row in report["samplers"]] == [100, 4, 10, 4, 10, 6, 18]
    assert report["samplers"][0]["speedup_vs_ddpm"] == 1.0
    assert all(row["fid"] >= 0 and 0 <= row["class_accuracy"] <= 1 for row in report["samplers"])
    assert iio.imread(tmp_path / "c.png").shape[:2] == (420, 690)  # 4 rows x 7 sampler columns
    assert report["plot"] == str(tmp_path / "f.png") and iio.imread(tmp_path / "f.png").shape[:2] == (450, 1100)

    table = invoke("compare", "--checkpoint", run_dir, "--samplers", "ddim", "--steps", "3", "--n", "4", "--no-eval",
                   "--out", tmp_path / "d.png", "--device", "cpu")
    assert "DDIM-3" in table.output and "speed-up" in table.output


def test_compare_other_samplers(run_dir, tmp_path):
    result = invoke("compare", "--checkpoint", run_dir, "--samplers", "ddim", "--steps", "2", "--eta", "1", "--n", "3",
                    "--no-eval", "--json", "--out", tmp_path / "c.png", "--device", "cpu")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert [row["sampler"] for row in report["samplers"]] == ["DDPM-50", "DDIM-2"] and report["eta"] == 1.0
    bad = runner.invoke(app, ["compare", "--checkpoint", str(run_dir), "--samplers", "ddpm", "--no-eval"])
    assert bad.exit_code == 2 and "baseline" in bad.output


def test_export_safetensors_samples_like_the_checkpoint(run_dir, tmp_path):
    out = tmp_path / "model.safetensors"
    invoke("export", "--checkpoint", run_dir, "--out", out)
    for source, name in ((run_dir, "a"), (out, "b")):
        invoke("sample", "--checkpoint", source, "--n", "5", "--ddim", "3", "--seed", "3",
               "--out", tmp_path / f"{name}.png", "--npz", tmp_path / f"{name}.npz", "--device", "cpu")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
    result = runner.invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 2 and "exported model" in result.output


def test_export_pt2_matches_pytorch(run_dir, tmp_path):
    out = tmp_path / "model.pt2"
    result = invoke("export", "--checkpoint", run_dir, "--format", "pt2", "--out", out)
    assert "max abs error" in result.output
    pipe = Pipeline.from_checkpoint(run_dir)
    x, t, labels = example_inputs(pipe, 7, seed=5)  # another batch size than the export's
    reloaded = torch.export.load(str(out)).module()
    torch.testing.assert_close(reloaded(x, t, labels), pipe.model(x, t, labels), atol=1e-4, rtol=0)


def test_export_onnx_matches_pytorch(run_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")  # .ci/run installs the onnx extra, so CI runs this
    out = tmp_path / "model.onnx"
    result = invoke("export", "--checkpoint", run_dir, "--format", "onnx", "--out", out)
    assert "onnxruntime vs PyTorch" in result.output
    pipe = Pipeline.from_checkpoint(run_dir)
    x, t, labels = example_inputs(pipe, 3, seed=9)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x_t": x.numpy(), "t": t.numpy(), "labels": labels.numpy()})
    np.testing.assert_allclose(got, pipe.model(x, t, labels).detach().numpy(), atol=1e-4, rtol=0)


def test_bad_export_format(run_dir):
    result = runner.invoke(app, ["export", "--checkpoint", str(run_dir), "--format", "tflite"])
    assert result.exit_code == 2 and "choose one of safetensors, onnx, pt2" in result.output


def test_readme_engine_examples_run(run_dir):
    """The README's "Using the engine from Python" blocks, run as written against a real checkpoint."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Using the engine from Python"):readme.index("## Tests")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    scope = {}
    exec(blocks[0].replace('"runs/unet-small"', repr(str(run_dir))), scope)
    assert scope["images"].shape == (10, 1, 28, 28) and scope["traj"].x0.shape == (50, 1, 1, 28, 28)
    exec(blocks[1], scope)
    assert scope["images"].shape == (10, 1, 28, 28)
