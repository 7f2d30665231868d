import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import synthetic_digits
from tinydiff_cli.evaluation.classifier import train_classifier
from tinydiff_cli.cli.main import app
from tinydiff_cli.data.datasets import Split
from tinydiff_cli.evaluation.metrics import class_histogram, fid_from_features, frechet_distance, gaussian_stats


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form_for_2d_gaussians():
    """For 2x2 PSD matrices, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))."""
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    s1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    trace_sqrt = math.sqrt((s1 @ s2).trace().item() + 2 * math.sqrt(torch.det(s1).item() * torch.det(s2).item()))
    expected = 8.0 + s1.trace().item() + s2.trace().item() - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_isotropic_gaussians_and_sample_estimate():
    d, a, b = 8, 4.0, 1.0
    shift = torch.full((d,), 0.5)
    expected = shift.pow(2).sum().item() + d * (math.sqrt(a) - math.sqrt(b)) ** 2
    exact = frechet_distance(torch.zeros(d), a * torch.eye(d), shift, b * torch.eye(d))
    assert exact == pytest.approx(expected, rel=1e-10)
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(a) * torch.randn(200_000, d, generator=g)
    y = shift + math.sqrt(b) * torch.randn(200_000, d, generator=g)
    assert fid_from_features(x, y) == pytest.approx(expected, rel=0.02)
    mu, cov = gaussian_stats(y)
    assert cov.dtype == torch.float64 and mu[0].item() == pytest.approx(0.5, abs=0.01)


def test_class_histogram():
    assert class_histogram(torch.tensor([0, 0, 1, 3]), 4) == [0.5, 0.25, 0.0, 0.25]


def test_classifier_learns_separable_synthetic_data():
    images, labels = synthetic_digits(2000, seed=0)
    test_images, test_labels = synthetic_digits(500, seed=1)
    train = Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())
    test = Split(torch.from_numpy(test_images).unsqueeze(1), torch.from_numpy(test_labels).long())
    model, accuracy = train_classifier(train, test, epochs=2, batch_size=64, log=lambda m: None)
    assert accuracy >= 0.98
    assert model.features(torch.zeros(3, 1, 28, 28)).shape == (3, 128)


def test_eval_npz_end_to_end(data_dir, tmp_path):
    """The test split scored as if it were samples: FID against itself is 0, accuracy is the classifier's."""
    from tinydiff_cli.data.mnist import load_split

    test = load_split("mnist", data_dir, train=False)
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=test.images.permute(0, 2, 3, 1).numpy(), arr_1=test.labels.numpy())  # (N, 28, 28, 1)
    result = CliRunner().invoke(app, ["eval", "--npz", str(npz), "--data-dir", str(data_dir), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    score = json.loads(result.stdout[result.stdout.index("{"):])
    assert score["n"] == len(test)
    assert score["fid"] == pytest.approx(0.0, abs=1e-6)
    assert score["class_accuracy"] == pytest.approx(score["classifier_test_accuracy"])
    assert score["fid_real_floor"] > 0
    assert len(score["class_histogram"]) == 10 and sum(score["class_histogram"]) == pytest.approx(1.0)
    assert list(data_dir.glob("tinydiff-classifier-mnist-*.json"))  # cached beside the data

    table = CliRunner().invoke(app, ["eval", "--npz", str(npz), "--data-dir", str(data_dir), "--device", "cpu"])
    assert table.exit_code == 0 and "real-data floor" in table.output

    # inverted images are far from the test split; wrong labels lower the accuracy
    shifted = (test.labels.numpy() + 1) % 10
    np.savez(npz, arr_0=255 - test.images[:, 0].numpy(), arr_1=shifted)  # (N, 28, 28) also reads as grey
    result = CliRunner().invoke(app, ["eval", "--npz", str(npz), "--data-dir", str(data_dir), "--json", "--device", "cpu"])
    worse = json.loads(result.stdout[result.stdout.index("{"):])
    assert worse["fid"] > 0.1 and worse["class_accuracy"] < 0.5


def test_eval_rejects_a_foreign_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((4, 32, 20, 3), dtype=np.uint8))
    result = CliRunner().invoke(app, ["eval", "--npz", str(bad)])
    assert result.exit_code == 2 and "must be uint8 square images shaped" in result.output
    np.savez(bad, arr_0=np.zeros((4, 32, 32, 3), dtype=np.uint8))  # a valid layout, but not MNIST's: said before loading it
    result = CliRunner().invoke(app, ["eval", "--npz", str(bad)])
    assert result.exit_code == 2 and "holds 32x32 images with 3 channels, but mnist's are 28x28 with 1" in result.output
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((4, 28, 28), dtype=np.uint8))
    result = CliRunner().invoke(app, ["eval", "--npz", str(single)])
    assert result.exit_code == 2 and "not a sample .npz" in result.output


def test_train_eval_every_logs_fid_and_accuracy(tiny_preset, data_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", str(tiny_preset), "--data-dir", str(data_dir), "--out", str(out),
                                      "--device", "cpu", "--eval-every", "4", "--set", "train.eval_samples=20",
                                      "--set", "train.sample_rows=0"])
    assert result.exit_code == 0, result.output
    assert "step 4: FID@20" in result.output and "class accuracy" in result.output
    rows = [line.split(",") for line in (out / "loss.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    scored = [dict(zip(header, r)) for r in rows if r[header.index("fid")]]
    assert [r["step"] for r in scored] == ["4", "8"]
    assert all(r["fid_n"] == "20" for r in scored)
    for row in scored:
        # the scores logged are those `tinydiff eval` gives for that step's checkpoint (its EMA weights) at the
        # settings the docs name: train.eval_samples images by DDIM train.sample_steps at train.sample_w, seed + 1
        ckpt = out / f"ckpt_{int(row['step']):07d}.json"
        result = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--n", "20", "--ddim", "5", "--w", "1",
                                          "--seed", "1", "--json", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        score = json.loads(result.stdout[result.stdout.index("{"):])
        assert float(row["fid"]) == pytest.approx(score["fid"], rel=1e-4)
        assert float(row["class_acc"]) == pytest.approx(score["class_accuracy"], abs=1e-4)
    assert scored[0]["fid"] != scored[1]["fid"]


def test_the_floor_says_on_how_many_images_it_stands_when_the_split_is_smaller_than_n():
    """With N above the training split, the floor is all of the split against the test split (not N), and the
    score and `tinydiff eval`'s row say so."""
    from tinydiff_cli.cli.eval import floor_label
    from tinydiff_cli.data.datasets import DataInfo, Dataset
    from tinydiff_cli.evaluation.scorer import Scorer

    class PixelFeatures:  # the features are the pixels themselves: the floor is then a Frechet distance of pixels
        test_accuracy = 1.0

        def embed(self, images):
            x = images.reshape(len(images), -1).float() / 255
            return x[:, :8], torch.zeros(len(images), dtype=torch.long)

    g = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (30, 1, 4, 4), generator=g, dtype=torch.uint8), torch.zeros(30, dtype=torch.long))
    test = Split(torch.randint(0, 256, (40, 1, 4, 4), generator=g, dtype=torch.uint8), torch.zeros(40, dtype=torch.long))
    scorer = Scorer(PixelFeatures(), Dataset(train, test, DataInfo("synthetic", 4, 1, 1, ("a",))))
    samples = torch.randint(0, 256, (50, 4, 4), generator=g, dtype=torch.uint8)
    score = scorer.score(samples)
    assert (score.n, score.floor_n) == (50, 30)
    all_train, _ = PixelFeatures().embed(train.images)
    assert score.fid_real_floor == pytest.approx(fid_from_features(all_train, scorer.test_features))
    assert "N=30: all the train images, fewer than the 50 samples" in floor_label(score)
    assert scorer.score(samples[:20]).floor_n == 20 and floor_label(scorer.score(samples[:20])).endswith("(N=20 train images)")
