"""TINYDIFF_DATA, set once, is where every command that reads the dataset looks (train, visualize forward, eval,
compare), so that a user with the raw files elsewhere never needs --data-dir (issue 19, item 6)."""
import json

import numpy as np
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app, normalize_argv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv([str(a) for a in args]))


def test_every_command_that_reads_the_data_finds_it_through_tinydiff_data(tiny_preset, data_dir, tmp_path,
                                                                           monkeypatch):
    from tinydiff_cli.data.mnist import load_split

    test = load_split("mnist", data_dir, train=False)
    npz = tmp_path / "real.npz"
    np.savez(npz, arr_0=test.images[:32].permute(0, 2, 3, 1).numpy(), arr_1=test.labels.numpy()[:32])
    run = tmp_path / "run"
    commands = {
        "train": ["train", "--preset", tiny_preset, "--out", run, "--max-steps", "2", "--device", "cpu"],
        "visualize forward": ["visualize", "forward", "--n", "2", "--out", tmp_path / "forward.png"],
        "eval": ["eval", "--npz", npz, "--json", "--device", "cpu"],
        "compare": ["compare", "--checkpoint", run, "--samplers", "ddim", "--steps", "2", "--n", "4", "--show", "2",
                    "--out", tmp_path / "compare.png", "--plot", tmp_path / "frontier.png", "--json", "--device", "cpu"],
    }
    # pointed at an empty folder, each says it looked there: it reads TINYDIFF_DATA, not a default of its own
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TINYDIFF_DATA", str(empty))
    for name, args in commands.items():
        if name == "compare":
            continue  # needs the run that train makes below
        result = invoke(*args)
        assert result.exit_code == 2 and f"MNIST not found in {empty / 'MNIST' / 'raw'}" in " ".join(result.output.split()), \
            (name, result.output)

    monkeypatch.setenv("TINYDIFF_DATA", str(data_dir))
    for name, args in commands.items():
        result = invoke(*args)
        assert result.exit_code == 0, (name, result.output)
    meta = json.loads((run / "last.json").read_text())
    assert meta["config"]["data"]["data_dir"] is None  # the run keeps following TINYDIFF_DATA, not a frozen path

    monkeypatch.setenv("TINYDIFF_DATA", str(empty))
    result = invoke(*commands["compare"])
    assert result.exit_code == 2 and f"MNIST not found in {empty / 'MNIST' / 'raw'}" in " ".join(result.output.split()), \
        result.output
