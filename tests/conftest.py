"""Shared fixtures: a tiny synthetic MNIST in torchvision's raw IDX layout, and a tiny model preset."""
from __future__ import annotations

import importlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

TINY_PRESET = """
model:
  type: unet
  base_channels: 8
  channel_mults: [1, 2]
  num_res_blocks: 1
  attn_resolutions: [14]
  groups: 4
  heads: 2
diffusion:
  schedule: linear
  timesteps: 50
  objective: eps
train:
  batch_size: 32
  lr: 1.0e-3
  warmup_steps: 2
  epochs: 1
  log_every: 2
  checkpoint_every: 4
  eval_images: 32
  sample_steps: 5
  sample_rows: 1
"""


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright vertical bar at column 3 + 2k, with a little noise: easy to tell apart."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 30, size=(n, 28, 28))
    for k in range(10):
        images[labels == k, 4:24, 3 + 2 * k:5 + 2 * k] = 230
    return images.astype(np.uint8), labels


def make_mnist(root: Path, folder: str = "MNIST", n_train: int = 256, n_test: int = 64) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx_images(raw / f"{split}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def optional_module(name: str):
    """The optional dependency `name` (onnxruntime from the onnx extra, streamlit from the app extra), or a skip when it
    is not installed; where TINYDIFF_REQUIRE_OPTIONAL=1 (.ci/run installs every extra) its absence is a failure."""
    if os.environ.get("TINYDIFF_REQUIRE_OPTIONAL") == "1":
        return importlib.import_module(name)  # an ImportError here fails the test, or the module that needs it
    return pytest.importorskip(name)


# Under pytest-xdist (`pytest -n 2`) each worker runs torch on one thread, and so do the commands it starts: two
# workers with a thread per core each would oversubscribe the cores, which slows torch's OpenMP kernels severalfold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Decoded image folders and their classifiers go to a cache of the test session's own, not ~/.cache/tinydiff.
os.environ["TINYDIFF_CACHE"] = tempfile.mkdtemp(prefix="tinydiff-test-cache-")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never touch the network: a missing dataset is an error, not a download."""
    monkeypatch.setenv("TINYDIFF_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """One tiny training run (8 steps = 1 epoch) at <tmp>/runs/tiny, shared by every test that needs a
    checkpoint; returns the run folder and what `tinydiff train` printed."""
    import os

    from typer.testing import CliRunner

    from tinydiff_cli.cli.main import app

    os.environ["TINYDIFF_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_mnist(root / "data")
    (root / "tiny.yaml").write_text(TINY_PRESET)
    result = CliRunner().invoke(app, ["train", "--preset", str(root / "tiny.yaml"), "--data-dir", str(data),
                                      "--out", str(root / "runs" / "tiny"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny", result.output


@pytest.fixture
def tiny_preset(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PRESET)
    return path
