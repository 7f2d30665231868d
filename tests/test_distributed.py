"""Data-parallel training under torchrun (gloo on CPU): N ranks take the step one process takes with the same global
batch, rank 0 alone writes, a killed rank ends the job with a message, and the run resumes (issue 16)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tinydiff_cli.io.checkpoint import load_checkpoint
from tinydiff_cli.cli.main import app, normalize_argv
from tinydiff_cli.config import load_config
from tinydiff_cli.runtime.distributed import Dist
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.training.trainer import Trainer

# constant learning rate: a run's learning rate then does not depend on where it was planned to end
SETTINGS = ["--set", "train.lr_schedule=constant", "--set", "train.sample_rows=0", "--set", "train.eval_images=0",
            "--set", "train.checkpoint_every=100000", "--set", "train.log_every=1", "--device", "cpu"]


def test_each_rank_takes_its_own_rows_of_the_one_global_batch(tiny_preset, data_dir, tmp_path):
    cfg = load_config(str(tiny_preset), [f"data.data_dir={data_dir}"])
    trainer = Trainer(cfg, tmp_path / "run", "cpu")
    for step in (0, 5, 9):  # across an epoch boundary (8 steps per epoch)
        trainer.dist = Dist()
        images, labels = trainer.batch(step)
        shares = []
        for rank in (0, 1):
            trainer.dist = Dist(rank=rank, world_size=2)
            shares.append(trainer.batch(step))
        # disjoint halves (a permutation has no repeats) that together are the single process's batch, in order
        assert torch.equal(torch.cat([s[0] for s in shares]), images)
        assert torch.equal(torch.cat([s[1] for s in shares]), labels)
        assert shares[0][0].shape[0] == shares[1][0].shape[0] == cfg.train.batch_size // 2
    with pytest.raises(TinydiffError, match="global batch and must divide evenly over the 3 processes"):
        Dist(world_size=3).check_batch(32)


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "tinydiff_cli", *map(str, args)]


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The PID of the worker with RANK=rank among the launcher's children (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == launcher.pid and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no rank {rank} under {launcher.pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_two_ranks_equal_one_process_only_rank_0_writes_and_a_killed_rank_ends_the_job(tiny_preset, data_dir,
                                                                                       tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "TINYDIFF_OFFLINE": "1"}
    common = ["train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, *SETTINGS]
    # the job logs every step: its output goes to a file, since a pipe nobody reads fills up and blocks rank 0
    log = tmp_path / "torchrun.log"
    with open(log, "w") as sink:
        job = subprocess.Popen(torchrun(*common, "--epochs", "100000"), stdout=sink, stderr=subprocess.STDOUT,
                               text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "last.json").exists():  # one epoch (8 steps) done
            assert time.time() < deadline and job.poll() is None, log.read_text()
            time.sleep(0.2)
        killed_at = time.time()
        os.kill(rank_pid(job, 1), signal.SIGKILL)
        job.wait(timeout=120)
    finally:
        job.kill()
    output = log.read_text()
    # the job ends; no rank is left waiting for the dead one: it ends in a few seconds here, and a rank that waited
    # would wait for the collective timeout (tinydiff's: 15 minutes), so 60 s tells the two apart with room
    assert time.time() - killed_at < 60
    assert job.returncode != 0
    assert "another process of this 2-process job failed or was killed" in output
    assert "continue with: torchrun --nproc_per_node 2 -m tinydiff_cli train --resume" in output
    stopped = load_checkpoint(run).step  # loadable after the kill
    assert stopped >= 8

    resumed = subprocess.run(torchrun(*common, "--resume", "--max-steps", stopped + 3), capture_output=True,
                             text=True, env=env, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("training finished") == 1  # rank 0 alone prints
    ddp = load_checkpoint(run)
    assert ddp.step == stopped + 3 and ddp.meta["world_size"] == 2
    with open(run / "loss.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["train_loss"]]
    assert steps == list(range(1, stopped + 4))  # every step's loss once: one writer, no rows from after the kill

    single = tmp_path / "single"
    result = CliRunner().invoke(app, normalize_argv([str(a) for a in [
        "train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", single, *SETTINGS, "--epochs", "100000",
        "--max-steps", stopped + 3]]))
    assert result.exit_code == 0, result.output
    one = load_checkpoint(single)
    assert one.meta["world_size"] == 1
    for prefix in ("model", "ema"):
        a, b = one.tensors(prefix), ddp.tensors(prefix)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4, prefix
    assert json.loads((single / "last.json").read_text())["train_loss"] == pytest.approx(ddp.meta["train_loss"], rel=1e-4)
