"""benchmarks/sweep.py on tiny data: every combination trains under the budget and is scored; the table, the CSV and
the plot are written (issue 14)."""
import csv
import importlib.util
from pathlib import Path

import imageio.v3 as iio
import yaml
from typer.testing import CliRunner

from tinydiff_cli.cli import app

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_process_cli(args):
    """The real commands, in this process (the tool itself starts a process per command)."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_combinations_are_the_cartesian_product():
    sweep = load_sweep()
    assert sweep.combinations(["a.x=1,2", "b.y=p"]) == [{"a.x": "1", "b.y": "p"}, {"a.x": "2", "b.y": "p"}]
    assert sweep.combinations([]) == [{}]
    assert sweep.run_name({"train.lr": "1e-3", "diffusion.objective": "v"}) == "lr=1e-3,objective=v"


def test_a_sweep_trains_scores_and_writes_the_table_and_the_plot(tiny_preset, data_dir, tmp_path):
    sweep = load_sweep()
    out = tmp_path / "sweep"
    args = sweep.parse_args(["--preset", str(tiny_preset), "--budget-minutes", "0.01", "--set", "train.lr=1e-3,3e-3",
                             "--n", "20", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out)])
    rows = sweep.sweep(args, run_cli=in_process_cli)
    assert [row["run"] for row in rows] == ["lr=1e-3", "lr=3e-3"]
    for row, lr in zip(rows, (1e-3, 3e-3)):
        assert yaml.safe_load((out / row["run"] / "config.yaml").read_text())["train"]["lr"] == lr
        assert row["steps"] >= 1 and row["fid"] > 0 and row["fid_real_floor"] > 0 and 0 <= row["class_accuracy"] <= 1
    with open(out / "sweep.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["lr=1e-3", "lr=3e-3"]
    table = (out / "sweep.md").read_text()
    assert "| train.lr | run | steps |" in table and "| 3e-3 | lr=3e-3 |" in table
    assert iio.imread(out / "sweep.png").ndim == 3
