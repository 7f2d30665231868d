"""benchmarks/budget_curve.py on the tiny run: each checkpoint is scored by the real eval, placed at its training time,
and the table, the CSV and the plot are written (issue 14: "say what budget does, with the curve")."""
import csv
import importlib.util
import json
from pathlib import Path

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from tinydiff_cli.cli import app

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def budget_curve(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports its helpers from sweep.py beside it
    spec = importlib.util.spec_from_file_location("budget_curve", BENCHMARKS / "budget_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_process_cli(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_runs_are_scored_and_placed_at_their_training_time(budget_curve, tiny_run, tmp_path):
    run, _ = tiny_run
    data = run.parents[1] / "data"
    out = tmp_path / "curve"
    args = budget_curve.parse_args([str(run / "ckpt_0000004.json"), str(run), "--n", "20", "--w", "1",
                                    "--w-max-sigma", "5", "--images-per-s", "100", "--device", "cpu",
                                    "--data-dir", str(data), "--out", str(out)])
    rows = budget_curve.budget_curve(args, run_cli=in_process_cli)
    assert [r["steps"] for r in rows] == [4, 8]
    assert [r["images_seen"] for r in rows] == [128, 256]  # the tiny preset's batch of 32
    assert [r["minutes"] for r in rows] == [round(128 / 100 / 60, 2), round(256 / 100 / 60, 2)]
    for row, meta in zip(rows, (run / "ckpt_0000004.json", run / "last.json")):
        assert row["seed"] == 0 and row["w"] == 1.0 and row["w_max_sigma"] == 5.0
        assert row["recorded_minutes"] == round(json.loads(meta.read_text())["elapsed_s"] / 60, 2)
        assert row["fid"] > 0 and row["x_floor"] == round(row["fid"] / row["fid_real_floor"], 2)
    with open(out / "budget.csv", newline="") as f:
        assert [int(r["steps"]) for r in csv.DictReader(f)] == [4, 8]
    table = (out / "budget.md").read_text()
    assert "w = 1, guided at sigma <= 5; x: minutes at 100 images/s" in table and "| run | seed | steps |" in table
    assert iio.imread(out / "budget.png").ndim == 3


def test_without_a_throughput_each_run_is_placed_at_its_recorded_minutes(budget_curve, tiny_run, tmp_path):
    run, _ = tiny_run
    args = budget_curve.parse_args([str(run), "--n", "20", "--device", "cpu", "--data-dir",
                                    str(run.parents[1] / "data"), "--out", str(tmp_path / "curve")])
    [row] = budget_curve.budget_curve(args, run_cli=in_process_cli)
    elapsed_s = json.loads((run / "last.json").read_text())["elapsed_s"]
    assert row["minutes"] == row["recorded_minutes"] == round(elapsed_s / 60, 2)
    assert row["w_max_sigma"] is None  # the model's own: no interval


def test_a_folder_that_is_not_a_run_stops_before_any_eval(budget_curve, tiny_run, tmp_path):
    run, _ = tiny_run
    for bad, message in ((tmp_path, "is not a tinydiff run folder"), (tmp_path / "typo", "no such run folder")):
        args = budget_curve.parse_args([str(run), str(bad), "--out", str(tmp_path / "curve")])  # a good run first
        with pytest.raises(SystemExit, match=message):
            budget_curve.budget_curve(args, run_cli=lambda a: pytest.fail("no eval should run"))


@pytest.mark.parametrize("flag, value", [("--images-per-s", "0"), ("--w-max-sigma", "-1"), ("--w-max-sigma", "nan")])
def test_bad_numbers_are_refused_when_parsed(budget_curve, flag, value, capsys):
    with pytest.raises(SystemExit):
        budget_curve.parse_args(["some-run", flag, value])
    assert flag in capsys.readouterr().err
