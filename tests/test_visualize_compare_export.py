"""visualize, compare and export end to end on a tiny trained model."""
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import optional_module, synthetic_digits
from pixels import axes_frames, curve_height, framed_images, grid_images

from tinydiff_cli.cli.main import app
from tinydiff_cli.sampling.export import example_inputs
from tinydiff_cli.sampling.pipeline import Pipeline

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run[0]


def cosine_alpha_bar(t: int, T: int = 1000, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, eq. 17."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t / T) / f(0)


def mean_of_clipped_normal(m: float, sd: float) -> float:
    """E[clip(Y, -1, 1)] for Y ~ N(m, sd^2): what a figure that clamps x_t to [-1, 1] shows on average."""
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    a, b = (-1 - m) / sd, (1 - m) / sd
    return -cdf(a) + (1 - cdf(b)) + m * (cdf(b) - cdf(a)) + sd * (pdf(a) - pdf(b))


def test_visualize_forward_shows_the_test_images_noised_as_q_says(data_dir, tmp_path):
    out = tmp_path / "forward.png"
    invoke("visualize", "forward", "--data-dir", data_dir, "--n", "3", "--schedule", "cosine", "--out", out)
    assert iio.imread(out).shape[:2] == (330, 780)  # 3 rows x 8 labelled columns at 0.9 in per cell, 100 dpi

    invoke("visualize", "forward", "--data-dir", data_dir, "--n", "6", "--schedule", "cosine", "--timesteps",
           "0,500,999", "--out", out)
    cells = grid_images(iio.imread(out), 28)
    assert sorted(cells) == [(i, j) for i in range(6) for j in range(3)]
    real = synthetic_digits(64, seed=1)[0][:6].astype(float)  # the test split of conftest's data, in order
    for i in range(6):
        assert np.corrcoef(cells[i, 0].ravel(), real[i].ravel())[0, 1] > 0.95  # t = 0: the image itself, row i
        assert abs(np.corrcoef(cells[i, 2].ravel(), real[i].ravel())[0, 1]) < 0.2  # t = 999: noise
    x0 = real / 255 * 2 - 1
    for j, t in ((1, 500), (2, 999)):
        # x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, shown clamped: the mean grey level it must have over
        # these 6 x 784 pixels (sampling error about 1 level; alpha_bar 0.4 or 0.6 instead of 0.49 moves it 7 levels)
        ab = cosine_alpha_bar(t)
        expected = np.mean([mean_of_clipped_normal(math.sqrt(ab) * v, math.sqrt(1 - ab)) for v in x0.ravel()])
        shown = np.mean([cells[i, j] for i in range(6)])
        assert abs(shown - (expected + 1) / 2 * 255) < 4, (t, shown, (expected + 1) / 2 * 255)


def test_visualize_schedule_draws_the_linear_alpha_bar(tmp_path):
    out = tmp_path / "s.png"
    invoke("visualize", "schedule", "--out", out)
    png = iio.imread(out)
    assert png.shape[:2] == (400, 1000)
    (top, bottom, left, right), _ = axes_frames(png)  # alpha_bar_t on the left, log-SNR on the right
    T = 1000
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))  # Ho et al. 2020: beta linear from 1e-4 to 0.02
    x_lim, y_lim = (-0.05 * (T - 1), 1.05 * (T - 1)), (-0.05, 1.05)  # matplotlib's 5% margins around 0..T-1, 0..1
    for t in (150, 250, 400, 600):
        x = round(left + (t - x_lim[0]) / (x_lim[1] - x_lim[0]) * (right - left))
        y = curve_height(png, x, (31, 119, 180), top + 1, bottom)  # the first line: matplotlib's C0 blue, "linear"
        drawn = y_lim[0] + (bottom - y) / (bottom - top) * (y_lim[1] - y_lim[0])
        assert abs(drawn - alpha_bar[t]) < 0.01, (t, drawn, alpha_bar[t])  # 3 px of the 305-px-high chart


def test_visualize_denoise_gif_and_strip_show_the_sample(run_dir, tmp_path):
    from tinydiff_cli.data.datasets import to_uint8

    result = invoke("visualize", "denoise", "--checkpoint", run_dir, "--digit", "4", "--n", "2", "--ddim", "5",
                    "--out", tmp_path / "den")
    frames = iio.imread(tmp_path / "den.gif", index=None)
    assert frames.shape[0] == 5 + 1  # one frame per step, then the result (held, merged by the GIF writer)
    assert frames.shape[1:3] == ((2 * 29 - 1) * 4, 57 * 4)  # 2 samples stacked; x_t | x_0 side by side, 4x
    assert "6 frames" in result.output
    invoke("sample", "--checkpoint", run_dir, "--digit", "4", "--n", "2", "--ddim", "5", "--out", tmp_path / "g.png",
           "--npz", tmp_path / "s.npz", "--device", "cpu")
    sampled = np.load(tmp_path / "s.npz")["arr_0"][..., 0].astype(int)
    last = frames[-1] if frames.ndim == 3 else frames[-1, ..., 0]
    for i in range(2):  # the last frame's x_t and x_0 panels are the sample `tinydiff sample` gives
        rows = slice(i * 29 * 4, (i * 29 + 28) * 4, 4)
        np.testing.assert_allclose(last[rows, 0:112:4], sampled[i], atol=1)
        np.testing.assert_allclose(last[rows, 116:228:4], sampled[i], atol=1)
    first = frames[0] if frames.ndim == 3 else frames[0, ..., 0]
    assert 0.2 < np.isin(first[0:112:4, 0:112:4], (0, 255)).mean() < 0.45  # x_T ~ N(0, 1): 32% beyond [-1, 1]
    # the strip, through matplotlib: two rows per sample (x_t above predicted x_0), a column per step (5 <= 10, so
    # all of them), then the result; every panel the frame of the same trajectory, recomputed here, and the last the
    # sample `tinydiff sample` gave, to 2 grey levels (colormap rounding) inside the 1-px frame matplotlib draws over
    # each image's edge
    cells = framed_images(iio.imread(tmp_path / "den.png"), 28)
    assert sorted(cells) == [(i, j) for i in range(4) for j in range(6)]
    pipe = Pipeline.from_checkpoint(run_dir)
    traj = pipe.trajectory(pipe.labels(4, 2), sampler="ddim", steps=5, seed=0)  # the CLI's defaults: w = 1, seed 0
    shown = lambda x: to_uint8(x)[..., 0].numpy().astype(int)[:, 1:-1, 1:-1]  # noqa: E731
    for j, (x_t, x0) in enumerate(zip([*traj.x[:5], traj.x[5]], [*traj.x0, traj.x[5]])):
        for i in range(2):
            np.testing.assert_allclose(cells[2 * i, j][1:-1, 1:-1], shown(x_t)[i], atol=2, err_msg=f"x_t {i}, {j}")
            np.testing.assert_allclose(cells[2 * i + 1, j][1:-1, 1:-1], shown(x0)[i], atol=2, err_msg=f"x_0 {i}, {j}")
    for i in range(2):
        np.testing.assert_allclose(cells[2 * i, 5][1:-1, 1:-1], sampled[i, 1:-1, 1:-1], atol=2)
        np.testing.assert_allclose(cells[2 * i + 1, 5][1:-1, 1:-1], sampled[i, 1:-1, 1:-1], atol=2)
    # neighbouring columns differ, so a frame shown in the wrong column fails the checks above
    for j in range(5):
        assert (np.abs(cells[0, j] - cells[0, j + 1])[1:-1, 1:-1] > 2).mean() > 0.01


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
    for row, flags in ((report["samplers"][0], ["--sampler", "ddpm"]), (report["samplers"][2], ["--ddim", "5"])):
        # each row's scores are those `tinydiff eval` gives for that sampler on the same labels and seed
        score = invoke("eval", "--checkpoint", run_dir, "--n", "6", *flags, "--json", "--device", "cpu").stdout
        score = json.loads(score[score.index("{"):])
        assert row["fid"] == round(score["fid"], 3) and row["class_accuracy"] == pytest.approx(score["class_accuracy"], abs=1e-4)
    fids = [row["fid"] for row in report["samplers"]]
    # at 2 steps DPM++(2M) is DDIM: its first step is first order (DDIM's, with eta 0) and both land on x_0
    assert fids[1] == fids[3] and len({fids[0], fids[1], fids[2], fids[4], fids[6]}) == 5
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
    onnxruntime = optional_module("onnxruntime")  # .ci/run installs the onnx extra and requires it
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


def test_readme_engine_examples_run_and_give_what_they_say(run_dir, tmp_path):
    """The README's "Using the engine from Python" blocks, run as written against a real checkpoint."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Using the engine from Python"):readme.index("## Tests")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    from tinydiff_cli.data.datasets import to_uint8

    scope = {}
    exec(blocks[0].replace('"runs/unet-small"', repr(str(run_dir))), scope)
    assert scope["images"].shape == (10, 1, 28, 28) and scope["traj"].x0.shape == (50, 1, 1, 28, 28)
    # what the comments promise: the images `tinydiff sample` gives at the model's own w, and the trajectory's last
    # frame is the sample drawn with the same settings
    out = tmp_path / "s"
    invoke("sample", "--checkpoint", run_dir, "--n", "10", "--sampler", "ddim", "--steps", "10", "--seed", "0",
           "--out", out.with_suffix(".png"), "--npz", out.with_suffix(".npz"), "--device", "cpu")
    np.testing.assert_array_equal(to_uint8(scope["images"]).numpy(), np.load(out.with_suffix(".npz"))["arr_0"])
    pipe = scope["pipe"]
    torch.testing.assert_close(scope["traj"].x[-1], pipe.sample(pipe.labels(3, 1), sampler="ddim", steps=50, seed=0))
    torch.manual_seed(0)  # the block draws x from the global generator: seeded, it is Pipeline.sample's seed-0 noise
    exec(blocks[1], scope)
    expected = pipe.sample(pipe.labels("all", 10), sampler="ddim", steps=10, eta=0.0, w=1.0, seed=0)
    torch.testing.assert_close(scope["images"], expected)
