"""benchmarks/sweep.py on tiny data: every combination trains under the budget and is scored; the table, the CSV and
the plot are written (issue 14)."""
import csv
import importlib.util
import json
import statistics
from pathlib import Path

import imageio.v3 as iio
import pytest
import yaml
from typer.testing import CliRunner

from tinydiff_cli.cli.main import app

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


def eval_on_its_own(run_dir, *flags):
    """`tinydiff eval --json` of a run folder, run here apart from the sweep: the scores a row must hold."""
    stdout = in_process_cli(["eval", "--checkpoint", str(run_dir), "--n", "20", "--json", "--device", "cpu", *flags])
    return json.loads(stdout[stdout.index("{"):])


def table_after(text: str, heading: str) -> list[dict]:
    """The Markdown table that follows `heading` in sweep.md, as dicts of strings."""
    lines = [line for line in text[text.index(heading):].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


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
        assert row["steps"] == json.loads((out / row["run"] / "last.json").read_text())["step"] >= 1
        score = eval_on_its_own(out / row["run"], "--data-dir", str(data_dir))
        assert (row["fid"], row["fid_real_floor"], row["class_accuracy"], row["n"]) == (
            round(score["fid"], 3), round(score["fid_real_floor"], 3), score["class_accuracy"], 20)
        assert row["w"] == 1.0  # no --w: each model is scored at its own train.sample_w
    with open(out / "sweep.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["lr=1e-3", "lr=3e-3"]
    table = (out / "sweep.md").read_text()
    assert "| train.lr | seed | run | steps |" in table and "| 3e-3 | 0 | lr=3e-3 |" in table
    assert "Mean over seeds" not in table  # one seed: nothing to average
    assert "w = each model's own" in table
    assert iio.imread(out / "sweep.png").ndim == 3


def test_seeds_repeat_each_setting_at_a_fixed_step_count_and_the_means_are_written(tiny_preset, data_dir, tmp_path):
    sweep = load_sweep()
    out = tmp_path / "sweep"
    args = sweep.parse_args(["--preset", str(tiny_preset), "--train-steps", "2", "--seeds", "1,2", "--n", "20",
                             "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out)])
    rows = sweep.sweep(args, run_cli=in_process_cli)
    assert [(row["run"], row["seed"], row["steps"]) for row in rows] == [
        ("preset,seed=1", 1, 2), ("preset,seed=2", 2, 2)]
    assert [yaml.safe_load((out / row["run"] / "config.yaml").read_text())["train"]["seed"] for row in rows] == [1, 2]
    # each seed's scores from its own eval, and the written means from those, computed here
    scores = [eval_on_its_own(out / row["run"], "--data-dir", str(data_dir)) for row in rows]
    fids = [score["fid"] for score in scores]
    assert fids[0] != fids[1]  # two seeds, two models
    [mean] = table_after((out / "sweep.md").read_text(), "Mean over seeds")
    assert (mean["seeds"], mean["mean_steps"]) == ("2", "2")
    assert float(mean["mean_fid"]) == pytest.approx(statistics.fmean(fids), abs=1e-3)
    assert float(mean["fid_spread"]) == pytest.approx(abs(fids[0] - fids[1]), abs=1e-3)
    assert float(mean["mean_class_accuracy"]) == pytest.approx(
        statistics.fmean(score["class_accuracy"] for score in scores), abs=1e-4)


def test_means_over_seeds_group_by_setting():
    sweep = load_sweep()
    rows = [{"diffusion.objective": obj, "seed": seed, "steps": 10, "fid": fid, "fid_real_floor": 1.0,
             "class_accuracy": acc} for obj, seed, fid, acc in
            [("eps", 1, 10.0, 0.9), ("eps", 2, 12.0, 0.8), ("v", 1, 7.0, 1.0), ("v", 2, 8.0, 0.9)]]
    summary = sweep.means_over_seeds(rows, keys=["diffusion.objective"])
    assert [(s["setting"], s["mean_fid"], s["fid_spread"], s["mean_class_accuracy"]) for s in summary] == [
        ("objective=eps", 11.0, 2.0, 0.85), ("objective=v", 7.5, 1.0, 0.95)]
    assert sweep.parse_args(["--train-steps", "5"]).budget_minutes is None


def test_several_guidance_weights_score_each_trained_model_at_every_w(tiny_preset, data_dir, tmp_path):
    sweep = load_sweep()
    out = tmp_path / "sweep"
    calls = []

    def recording_cli(args):
        calls.append(args[0])
        stdout = in_process_cli(args)
        if args[0] == "eval":  # the eval really ran at the w the row says
            extra = sweep.last_json_object(stdout)["extra"]
            assert extra["w"] == float(args[args.index("--w") + 1]) and extra["w_max_sigma"] == 5.0
        return stdout

    args = sweep.parse_args(["--preset", str(tiny_preset), "--train-steps", "2", "--w", "0,1.5", "--w-max-sigma", "5",
                             "--n", "20", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out)])
    rows = sweep.sweep(args, run_cli=recording_cli)
    assert calls == ["train", "eval", "eval"]  # one training, scored twice
    assert [(row["run"], row["w"]) for row in rows] == [("preset", 0.0), ("preset", 1.5)]
    table = (out / "sweep.md").read_text()
    assert "w = 0, 1.5, guided at sigma <= 5" in table and "best guidance weight" in table
    assert iio.imread(out / "sweep.png").ndim == 3


def test_best_guidance_picks_each_settings_lowest_mean_fid(capsys):
    sweep = load_sweep()
    rows = [{"train.lr": lr, "seed": seed, "steps": 10, "w": w, "fid": fid, "fid_real_floor": 1.0,
             "class_accuracy": 0.9} for lr, seed, w, fid in
            [("1e-3", 1, 0.5, 6.0), ("1e-3", 2, 0.5, 8.0), ("1e-3", 1, 1.0, 9.0), ("1e-3", 2, 1.0, 3.0),
             ("2e-3", 1, 0.5, 4.0), ("2e-3", 1, 1.0, 5.0)]]
    summary = sweep.means_over_seeds(rows, keys=["train.lr"])
    assert [(s["setting"], s["w"], s["mean_fid"]) for s in summary] == [
        ("lr=1e-3", 0.5, 7.0), ("lr=1e-3", 1.0, 6.0), ("lr=2e-3", 0.5, 4.0), ("lr=2e-3", 1.0, 5.0)]
    assert [(s["setting"], s["w"]) for s in sweep.best_guidance(summary)] == [("lr=1e-3", 1.0), ("lr=2e-3", 0.5)]
    assert sweep.guidance_weights("0.5,1") == [0.5, 1.0]
    for bad in ("1,x", "-1", "1,1"):
        with pytest.raises(SystemExit, match="--w"):
            sweep.guidance_weights(bad)
    for bad in ("0", "-1", "nan"):  # refused when parsed, before the first training
        with pytest.raises(SystemExit) as stopped:
            sweep.parse_args(["--train-steps", "5", "--w-max-sigma", bad])
        assert stopped.value.code == 2
        assert "error: --w-max-sigma takes a positive noise level such as 5" in capsys.readouterr().err


def test_several_step_counts_are_whole_runs_of_each_length(tiny_preset, data_dir, tmp_path):
    sweep = load_sweep()
    out = tmp_path / "sweep"
    args = sweep.parse_args(["--preset", str(tiny_preset), "--train-steps", "1,3", "--n", "20", "--device", "cpu",
                             "--data-dir", str(data_dir), "--out", str(out)])
    rows = sweep.sweep(args, run_cli=in_process_cli)
    assert [(row["train.max_steps"], row["run"], row["steps"]) for row in rows] == [
        ("1", "max_steps=1", 1), ("3", "max_steps=3", 3)]
    assert yaml.safe_load((out / "max_steps=3" / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert "1/3 steps each" in (out / "sweep.md").read_text()
    for bad in ("0", "5,x", "2,2"):
        with pytest.raises(SystemExit, match="--train-steps"):
            sweep.step_budgets(bad)


def test_the_default_runner_starts_the_real_command_in_its_own_process(tiny_preset, data_dir, tmp_path):
    """subprocess_cli, what `python benchmarks/sweep.py` uses: the installed tinydiff in a process of its own."""
    sweep = load_sweep()
    out = tmp_path / "sweep"
    args = sweep.parse_args(["--preset", str(tiny_preset), "--train-steps", "1", "--n", "20", "--device", "cpu",
                             "--data-dir", str(data_dir), "--out", str(out)])
    [row] = sweep.sweep(args)  # the default run_cli
    assert json.loads((out / "preset" / "last.json").read_text())["step"] == row["steps"] == 1
    score = eval_on_its_own(out / "preset", "--data-dir", str(data_dir))
    assert row["fid"] == round(score["fid"], 3) and row["class_accuracy"] == score["class_accuracy"]
    assert row["n"] == 20
