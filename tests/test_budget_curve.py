"""benchmarks/budget_curve.py on the tiny run: each checkpoint is scored by the real eval, placed at its training time,
and the table, the CSV and the plot are written (issue 14: "say what budget does, with the curve")."""
import csv
import importlib.util
import json
from pathlib import Path

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app

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
                                    "--w-max-sigma", "5", "--images-per-s", "2", "--device", "cpu",
                                    "--data-dir", str(data), "--out", str(out)])
    rows = budget_curve.budget_curve(args, run_cli=in_process_cli)
    assert [r["steps"] for r in rows] == [4, 8]
    assert [r["images_seen"] for r in rows] == [128, 256]  # the tiny preset's batch of 32
    assert [r["minutes"] for r in rows] == [1.07, 2.13]  # 128 and 256 images at 2 images/s: 64 s and 128 s
    for row, checkpoint, meta in zip(rows, (run / "ckpt_0000004.json", run), ("ckpt_0000004.json", "last.json")):
        assert row["seed"] == 0 and row["w"] == 1.0 and row["w_max_sigma"] == 5.0
        assert row["recorded_minutes"] == round(json.loads((run / meta).read_text())["elapsed_s"] / 60, 2)
        # the scores are those of `tinydiff eval` on that checkpoint at the same settings, run here on its own
        stdout = in_process_cli(["eval", "--checkpoint", str(checkpoint), "--n", "20", "--w", "1", "--w-max-sigma", "5",
                                 "--json", "--device", "cpu", "--data-dir", str(data)])
        score = json.loads(stdout[stdout.index("{"):])
        assert (row["fid"], row["fid_real_floor"], row["class_accuracy"], row["n"]) == (
            round(score["fid"], 3), round(score["fid_real_floor"], 3), score["class_accuracy"], 20)
        assert abs(row["x_floor"] - score["fid"] / score["fid_real_floor"]) <= 0.006  # to 2 decimals
    assert rows[0]["fid"] != rows[1]["fid"]  # two models, two scores: not one eval reported twice
    with open(out / "budget.csv", newline="") as f:
        assert [int(r["steps"]) for r in csv.DictReader(f)] == [4, 8]
    table = (out / "budget.md").read_text()
    assert "w = 1, guided at sigma <= 5; x: minutes at 2 images/s" in table and "| run | seed | steps |" in table
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
    with pytest.raises(SystemExit) as stopped:
        budget_curve.parse_args(["some-run", flag, value])
    assert stopped.value.code == 2
    kind = "a positive throughput such as 150" if flag == "--images-per-s" else "a positive noise level such as 5"
    # the refusal itself, not argparse's usage line (which names every flag whatever the error)
    assert f"error: {flag} takes {kind}" in capsys.readouterr().err
