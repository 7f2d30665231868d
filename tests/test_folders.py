"""`--dataset PATH`: folders of images (class subfolders, flat, train/test), decoded once, cached, and used by every
command; the bad folders each get one line."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_PRESET, make_mnist, optional_module
from tinydiff_cli.cli.main import app
from tinydiff_cli.data.load import load_dataset
from tinydiff_cli.data.mnist import load_split
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.data.folders import load_folder, scan

runner = CliRunner()
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_rgb_folder(root, per_class: int = 10, size: int = 32, seed: int = 0):
    """Class k: a vertical bar of its colour on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(10, 40, (size, size, 3)).astype(np.uint8)
            x = int(rng.integers(2, size - 10))
            pixels[4:size - 4, x:x + 8] = colour
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def write_mnist_as_pngs(idx_root, out):
    """The IDX files of `idx_root` as PNGs: out/train/<digit>/<i>.png and out/test/<digit>/<i>.png."""
    for split, train in (("train", True), ("test", False)):
        data = load_split("mnist", idx_root, train=train)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = out / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
    return out


def test_mnist_written_as_pngs_loads_as_the_same_images_and_labels(tmp_path):
    idx = make_mnist(tmp_path / "idx", n_train=60, n_test=20)
    folder = write_mnist_as_pngs(idx, tmp_path / "mnist-png")
    data = load_dataset(str(folder))
    assert data.info.shape == (1, 28, 28) and data.info.class_names == tuple(str(i) for i in range(10))
    for split, train in ((data.train, True), (data.test, False)):
        reference = load_split("mnist", idx, train=train)
        # the folder is read class by class; order both by (label, image bytes) to compare
        key = lambda s: sorted((int(l), bytes(im.numpy().tobytes())) for im, l in zip(s.images, s.labels))  # noqa: E731
        assert key(split) == key(reference)
    assert not any("held out" in note for note in data.notes)  # train/ and test/ chose the split


def test_class_folders_hold_out_every_tenth_image_and_keep_sorted_names(tmp_path):
    write_rgb_folder(tmp_path / "shapes", per_class=20)
    layout = scan(tmp_path / "shapes")
    assert layout.class_names == ("blue", "green", "red")
    assert len(layout.train) == 54 and len(layout.test) == 6
    assert [p.name for p, label in layout.test if label == 0] == ["009.png", "019.png"]
    data = load_folder(tmp_path / "shapes")
    assert data.info.shape == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist().count(2) == 18
    assert any("held out 6 of 60 images" in note for note in data.notes)


def test_grey_images_load_as_one_channel_and_channels_can_be_forced(tmp_path):
    folder = tmp_path / "grey"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(folder / "a" / "x.png")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(folder / "a" / "y.jpg", quality=100)  # RGB file, grey pixels
    data = load_folder(folder)
    assert data.info.shape == (1, 16, 16)
    assert sorted(data.train.images[:, 0, 0, 0].tolist()) == [90, 200]
    assert load_folder(folder, channels=3).info.shape == (3, 16, 16)
    write_rgb_folder(tmp_path / "rgb", per_class=1, size=16)
    grey = load_folder(tmp_path / "rgb", channels=1)
    assert grey.info.shape == (1, 16, 16)
    red = grey.train.images[grey.train.labels == 2][0, 0]
    assert int(red.max()) == round(0.299 * 220 + 0.587 * 40 + 0.114 * 40)  # ITU-R 601 luma of the red bar


def test_formats_transparency_and_resizing(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (0, 255)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])  # first frame: black
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(folder / "b.bmp")
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(folder / "clear.png")  # fully transparent: white
    Image.fromarray(np.full((40, 60, 3), 50, np.uint8)).save(folder / "wide.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image: ignored")
    with pytest.raises(TinydiffError, match=r"different sizes: 3 are 20x20 \(e.g. anim.gif\), 1 are 60x40 .*data.image_size"):
        load_folder(folder)
    data = load_folder(folder, image_size=16)
    assert data.info.num_classes == 0 and data.info.shape == (1, 16, 16)  # flat folder: unlabelled; all grey
    values = {name: int(img.float().mean().round()) for name, img in zip(["anim", "b", "clear", "wide"], data.test.images)}
    assert values == {"anim": 0, "b": 128, "clear": 255, "wide": 50}  # too few to hold out: test = train


def test_the_cache_is_used_until_the_folder_changes(tmp_path):
    folder = write_rgb_folder(tmp_path / "shapes", per_class=2, size=16)
    first = load_folder(folder)
    assert any(note.startswith("decoded 6 images once; cached at") for note in first.notes)
    second = load_folder(folder)
    assert any(note.startswith("read 6 images from the cache") for note in second.notes)
    assert torch.equal(first.train.images, second.train.images)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "red" / "new.png")
    third = load_folder(folder)
    assert len(third.train) == 7 and any("decoded 7 images once" in n for n in third.notes)  # too few to hold out
    path = folder / "red" / "000.png"
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a rewritten file with another modification time
    assert any("decoded 7 images once" in n for n in load_folder(folder).notes)


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no images; tinydiff reads png, jpg"),
    ("only_text", r"holds no images \(it holds other files, such as readme.txt\)"),
    ("mixed_layout", "mixes images at its top level"),
    ("empty_class", r"class folder .*cats holds no images; add images to it or remove it"),
    ("unreadable", r"1 file could not be read as images: .*broken.png \(not an image Pillow can read\); remove or replace it"),
    ("not_square", r"the images are 30x20, not square; choose a square size with --set data.image_size=N"),
    ("missing", "is neither mnist nor fashion-mnist and is not an existing folder"),
    ("split_mismatch", r"train has class folders but .*test does not; give both splits the same class folders"),
])
def test_bad_folders_get_one_line(tmp_path, case, message):
    folder = tmp_path / case
    folder.mkdir()
    image = Image.fromarray(np.zeros((12, 12), np.uint8))
    if case == "only_text":
        (folder / "readme.txt").write_text("hello")
    elif case == "mixed_layout":
        image.save(folder / "loose.png")
        (folder / "cls").mkdir()
        image.save(folder / "cls" / "a.png")
    elif case == "empty_class":
        (folder / "dogs").mkdir()
        image.save(folder / "dogs" / "a.png")
        (folder / "cats").mkdir()
    elif case == "unreadable":
        image.save(folder / "good.png")
        (folder / "broken.png").write_bytes(b"not a png at all")
    elif case == "not_square":
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "a.png")
    elif case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "split_mismatch":
        (folder / "train" / "a").mkdir(parents=True)
        image.save(folder / "train" / "a" / "x.png")
        (folder / "test").mkdir()
        image.save(folder / "test" / "y.png")
    result = invoke("train", "--preset", write_preset(tmp_path), "--dataset", folder, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert any(__import__("re").search(message, line) for line in result.output.splitlines()), result.output
    assert not (tmp_path / "run").exists()


def write_preset(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PRESET)
    return path


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A tiny model trained one epoch (3 steps) on a 32x32 RGB folder of 3 classes."""
    root = tmp_path_factory.mktemp("rgb")
    folder = write_rgb_folder(root / "shapes", per_class=10)
    result = invoke("train", "--preset", write_preset(root), "--dataset", folder, "--out", root / "run",
                    "--set", "train.batch_size=9", "--set", "train.sample_rows=1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root / "run", folder, result.output


def test_an_rgb_folder_trains_samples_and_exports(rgb_run, tmp_path):
    run, folder, output = rgb_run
    assert "held out 3 of 30 images" in output and "model.attn_resolutions [14] -> [16]" in output
    grid = np.asarray(Image.open(run / "samples" / "epoch_001.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3  # an RGB grid, one class per column
    npz = tmp_path / "s.npz"
    result = invoke("sample", "--checkpoint", run, "--digit", "green", "--n", 5, "--ddim", 3, "--out", tmp_path / "g.png",
                    "--npz", npz, "--device", "cpu")
    assert result.exit_code == 0, result.output
    arrays = np.load(npz)
    assert arrays["arr_0"].shape == (5, 32, 32, 3) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [1] * 5  # green: the second class in sorted order
    result = invoke("sample", "--checkpoint", run, "--digit", "purple", "--out", tmp_path / "g.png")
    assert result.exit_code == 2 and "a class name (blue, green, red)" in result.output

    onnxruntime = optional_module("onnxruntime")  # .ci/run installs the onnx extra and requires it
    onnx = tmp_path / "m.onnx"
    result = invoke("export", "--checkpoint", run, "--format", "onnx", "--out", onnx)
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    t, labels = np.array([10, 40]), np.array([0, 3])  # 3: the null class of a 3-class model
    out = session.run(None, {"x_t": x, "t": t, "labels": labels})[0]
    assert out.shape == (2, 3, 32, 32)
    from tinydiff_cli.sampling.pipeline import Pipeline

    model = Pipeline.from_checkpoint(run).model  # the EMA weights, which export writes
    with torch.no_grad():
        expected = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels)).numpy()
    assert np.abs(expected).max() > 1e-3  # a network that computes something, not the zero-initialised output layer
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_an_rgb_folder_is_scored_with_its_own_classifier(rgb_run, tmp_path):
    run, folder, _ = rgb_run
    result = invoke("eval", "--checkpoint", run, "--n", 6, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    score = __import__("json").loads(result.stdout[result.stdout.index("{"):])
    assert score["extra"]["dataset"] == str(folder.resolve())
    assert score["classifier_test_accuracy"] > 0.5  # 3 held-out images of 3 classes: chance is 1/3
    assert len(score["class_histogram"]) == 3 and score["class_accuracy"] is not None


def test_the_viewer_draws_an_rgb_model(rgb_run, monkeypatch, tmp_path):
    optional_module("streamlit")
    from streamlit.testing.v1 import AppTest

    from tinydiff_cli.cli.viewer import SCRIPT

    run, _, _ = rgb_run
    monkeypatch.setenv("TINYDIFF_APP_RUNS", str(run.parent))
    at = AppTest.from_file(str(SCRIPT), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="class").select("red")
    at.radio(key="sampler").set_value("ddim")
    at.run()
    at.slider(key="steps").set_value(3)
    at.slider(key="w").set_value(1.0)
    at.number_input(key="seed").set_value(3)
    at.button(key="generate").click()
    at.run()
    assert not at.exception, at.exception
    frames = at.session_state["result"]["frames"]
    assert frames.x.shape[1:] == (256, 256, 3) and frames.strip.shape[-1] == 3  # 32 px at scale 8, RGB
    # the last frame shows, in colour, the image `tinydiff sample` gives for the same class, sampler, w and seed
    npz = tmp_path / "s.npz"
    result = invoke("sample", "--checkpoint", run, "--digit", "red", "--n", 1, "--ddim", 3, "--w", "1", "--seed", 3,
                    "--out", tmp_path / "g.png", "--npz", npz, "--device", "cpu")
    assert result.exit_code == 0, result.output
    [sampled] = np.load(npz)["arr_0"]  # (32, 32, 3)
    assert sampled.std(axis=2).max() > 0  # not grey: the channels differ somewhere
    for shown in (frames.x[-1], frames.x0[-1]):
        np.testing.assert_array_equal(shown.numpy()[::8, ::8], sampled)


def test_an_unlabelled_folder_trains_unconditionally_and_eval_says_why_it_cannot_score(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_PRESET.replace("attn_resolutions: [14]", "attn_resolutions: [8]"))
    result = invoke("train", "--preset", preset, "--dataset", folder, "--out", run, "--max-steps", 2,
                    "--set", "train.batch_size=8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--checkpoint", run, "--n", 4, "--ddim", 2, "--out", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--checkpoint", run, "--digit", "3", "--out", tmp_path / "g.png")
    assert result.exit_code == 2 and "this model has no classes" in result.output
    result = invoke("eval", "--checkpoint", run, "--n", 4)
    assert result.exit_code == 2 and "has no class subfolders" in result.output and "needs labels" in result.output

    # the folder changes under the run: one colour image makes it RGB, which the model cannot continue on
    Image.fromarray(np.full((16, 16, 3), (200, 10, 10), np.uint8)).save(folder / "colour.png")
    result = invoke("train", "--resume", run, "--max-steps", 3)
    assert result.exit_code == 2, result.output
    assert "now loads as 16x16 RGB images, but the model was trained on 16x16 grey ones" in result.output
    result = invoke("train", "--preset", preset, "--dataset", folder, "--out", tmp_path / "run2", "--set", "train.batch_size=64")
    assert result.exit_code == 2 and "the training split has 12 images, fewer than one batch" in result.output


def test_the_example_shapes_folder_loads_as_three_rgb_classes(tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "make_shapes.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "shapes"), "--per-class", "3"])
    runpy.run_path(str(script), run_name="__main__")
    data = load_folder(tmp_path / "shapes")
    assert data.info.class_names == ("circle", "square", "triangle") and data.info.shape == (3, 32, 32)
    assert len(data.train) == 9
