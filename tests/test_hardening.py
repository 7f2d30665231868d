"""The faults real machines have (issue 18): full disks, divergence, damaged data files, two runs on one folder,
preemption, hostile artefacts and half-written caches. Each ends in one clear line, a non-zero exit, no traceback,
and the last good checkpoint still loadable."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_mnist
from tinydiff_cli.io.checkpoint import load_checkpoint
from tinydiff_cli.cli.main import app, normalize_argv
from tinydiff_cli.config import load_config
from tinydiff_cli.errors import TinydiffError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, normalize_argv([str(a) for a in args]))


def one_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


class Quiet:
    def start(self, total, step, description="train"): pass
    def update(self, step, metrics): pass
    def log(self, message): pass
    def finish(self): pass


def tiny_trainer(data_dir, out, *overrides):
    import tinydiff_cli.training.trainer as training

    cfg = load_config("unet-small", overrides=[
        "model.base_channels=8", "model.channel_mults=[1, 2]", "model.attn_resolutions=[]", "model.groups=4",
        "diffusion.timesteps=50", "train.batch_size=32", "train.eval_images=32", "train.sample_rows=0",
        "train.checkpoint_every=4", f"data.data_dir={data_dir}", *overrides])
    return training.Trainer(cfg, out, "cpu", Quiet())


def tinydiff_command() -> list[str]:
    script = Path(sys.executable).parent / "tinydiff"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tinydiff_cli"]


# ---- storage -------------------------------------------------------------------------------------------------------
def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint_and_leaves_no_temporary_file(data_dir, tmp_path,
                                                                                            monkeypatch):
    run = tmp_path / "run"
    trainer = tiny_trainer(data_dir, run, "train.epochs=2")  # 8 steps per epoch: `last` at step 8, then at 16
    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".last.") and (run / "last.json").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(TinydiffError) as failure:
        trainer.run()
    message = str(failure.value)
    assert f"could not write {run / 'last.safetensors'}: No space left on device; the disk is full" in message
    assert f"The newest good checkpoint is {run / 'ckpt_0000016.json'} (step 16)" in message  # written just before
    assert f"tinydiff train --resume {run / 'ckpt_0000016.json'}" in message
    assert load_checkpoint(run).step == 8  # the previous `last`, intact
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_a_read_only_output_is_one_line_naming_the_path(tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    out = tmp_path / "grid.png"

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    result = invoke("sample", "--checkpoint", run, "--n", "2", "--ddim", "2", "--out", out, "--device", "cpu")
    assert result.exit_code == 2
    assert f"could not write {out}: Read-only file system; the file system is read-only" in one_line(result)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_a_full_disk_while_logging_names_loss_csv(data_dir, tmp_path, monkeypatch):
    import csv

    run, real_writerow, rows = tmp_path / "run", csv.DictWriter.writerow, []

    def writerow(self, row):
        rows.append(row)
        if len(rows) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", writerow)
    with pytest.raises(TinydiffError, match=f"could not write {run / 'loss.csv'}: No space left on device"):
        tiny_trainer(data_dir, run, "train.log_every=2").run()
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_a_run_folder_that_disappears_mid_run_is_made_again_with_last_saved(data_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    trainer = tiny_trainer(data_dir, run, "train.log_every=2", "train.checkpoint_every=1000")

    class DeleteAfterStep3(Quiet):
        def update(self, step, metrics):
            if step == 3:
                shutil.rmtree(run)

    trainer.reporter = DeleteAfterStep3()
    with pytest.raises(TinydiffError) as failure:
        trainer.run()
    assert f"the run folder {run} disappeared while training" in str(failure.value)
    assert f"Continue with: tinydiff train --resume {run}" in str(failure.value)
    assert load_checkpoint(run).step == 4  # nothing trained in memory was lost


# ---- numbers -------------------------------------------------------------------------------------------------------
def test_a_nan_loss_stops_at_that_step_and_nothing_non_finite_is_kept(data_dir, tmp_path, monkeypatch):
    import tinydiff_cli.training.trainer as training

    real_loss, calls = training.diffusion_loss, []

    def loss_that_blows_up(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(training, "diffusion_loss", loss_that_blows_up)
    run = tmp_path / "run"
    trainer = tiny_trainer(data_dir, run)
    with pytest.raises(TinydiffError) as failure:
        trainer.run()
    message = str(failure.value)
    assert "training diverged at step 6: the loss is nan. The usual cause is too high a learning rate" in message
    assert f"continue with: tinydiff train --resume {run / 'ckpt_0000004.json'} --lr" in message
    assert trainer.step == 5  # the bad step was not applied
    for model in (trainer.model, trainer.ema.ema_model):
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run / "last.json").exists() and load_checkpoint(run / "ckpt_0000004.json").step == 4


def test_a_far_too_high_learning_rate_diverges_with_a_clear_message(tiny_preset, data_dir, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data_dir, "--out", run, "--lr", "1000",
                    "--set", "train.warmup_steps=0", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "training diverged at step" in one_line(result) and "too high a learning rate" in one_line(result)
    for path in run.glob("*.json"):  # whatever was saved is finite
        ckpt = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in ckpt.tensors("ema").values())


# ---- data ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    ("truncate", "train-images-idx3-ubyte is truncated: its header declares (256, 28, 28)"),
    ("magic", "train-labels-idx1-ubyte is not an IDX file of uint8 with 1 dimension (magic number 0x00000803"),
    ("counts", "holds 256 images but train-labels-idx1-ubyte holds 255 labels"),
    ("labels", "holds labels 0..200, expected 0..9"),
])
def test_damaged_dataset_files_are_named(tiny_preset, tmp_path, damage, message):
    data = make_mnist(tmp_path / "data")
    raw = data / "MNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "magic":
        labels.write_bytes(bytes.fromhex("00000803") + labels.read_bytes()[4:])
    elif damage == "counts":
        labels.write_bytes(labels.read_bytes()[:4] + (255).to_bytes(4, "big") + labels.read_bytes()[8:-1])
    else:
        labels.write_bytes(labels.read_bytes()[:-1] + bytes([200]))
    result = invoke("train", "--preset", tiny_preset, "--data-dir", data, "--out", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 2 and message in one_line(result), result.output
    assert not (tmp_path / "run").exists()  # nothing written, not even the lock


# ---- two runs, one folder; preemption --------------------------------------------------------------------------------
def wait_for(predicate, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_live_run_refuses_a_second_trainer_sigterm_saves_and_a_killed_run_leaves_no_stale_lock(
        tiny_preset, data_dir, tmp_path):
    run = tmp_path / "run"
    command = tinydiff_command() + ["train", "--preset", str(tiny_preset), "--data-dir", str(data_dir), "--out", str(run),
                                    "--device", "cpu", "--set", "train.sample_rows=0", "--set", "train.eval_images=0",
                                    "--set", "train.log_every=1", "--epochs", "100000"]
    # its output goes to a file, not a pipe: a pipe nobody reads fills up (64 KiB) and blocks the trainer mid-write
    log = tmp_path / "train.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (run / "last.json").exists())  # one epoch done
        for second in (["train", "--resume", run], ["train", "--preset", tiny_preset, "--out", run]):
            result = invoke(*second, "--data-dir", data_dir, "--device", "cpu")
            assert result.exit_code == 2, result.output
            assert f"{run} is in use: `tinydiff train` is running there as process {proc.pid}" in one_line(result)
        # a reader meanwhile gets a whole checkpoint
        sampled = invoke("sample", "--checkpoint", run, "--n", "2", "--ddim", "2", "--out", tmp_path / "g.png",
                         "--device", "cpu")
        assert sampled.exit_code == 0, sampled.output
        proc.send_signal(signal.SIGTERM)  # what a scheduler sends
        proc.wait(timeout=90)
    finally:
        proc.kill()
    output = log.read_text()
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert f"continue with: tinydiff train --resume {run / 'last.json'}" in output
    stopped = load_checkpoint(run).step

    resumed = subprocess.Popen(command[:-2] + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: load_checkpoint(run).step > stopped)
        resumed.send_signal(signal.SIGKILL)
        resumed.wait(timeout=30)
    finally:
        resumed.kill()
    killed_at = load_checkpoint(run).step  # loadable after kill -9
    result = invoke("train", "--resume", run, "--max-steps", killed_at + 2, "--device", "cpu")
    assert result.exit_code == 0, result.output  # the dead process's lock went with it
    assert load_checkpoint(run).step == killed_at + 2


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)])
def test_ctrl_c_and_sigterm_ask_for_a_stop_and_a_second_signal_aborts_at_once(data_dir, tmp_path, first, second):
    from tinydiff_cli.training.loop import stop_on_signals

    def before_int(signum, frame): pass
    def before_term(signum, frame): pass

    trainer = tiny_trainer(data_dir, tmp_path / "run")
    saved = signal.signal(signal.SIGINT, before_int), signal.signal(signal.SIGTERM, before_term)
    try:
        with pytest.raises(KeyboardInterrupt), stop_on_signals(trainer.loop):
            assert signal.getsignal(signal.SIGINT) is not before_int  # its own handlers while it runs
            os.kill(os.getpid(), first)
            time.sleep(0.01)  # Python runs a handler between bytecodes: long before this sleep ends
            assert trainer.stop_requested  # the first asks for a stop after the step, and a save
            os.kill(os.getpid(), second)
            time.sleep(0.01)
            pytest.fail("the second signal did not abort")  # it raises KeyboardInterrupt before this line
        # the handlers that were there before are back, exactly those
        assert signal.getsignal(signal.SIGINT) is before_int and signal.getsignal(signal.SIGTERM) is before_term
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


# ---- inconsistent or hostile artefacts ------------------------------------------------------------------------------
def copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("last.json", "last.safetensors"):
        (to / name).write_bytes((run / name).read_bytes())
    return to


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"]["model"].update(base_channels=16), "does not match its config"),
    (lambda m: m["config"]["model"].update(type="dit", hidden_size=16384, depth=256, patch_size=2),
     "more than tinydiff builds"),
    (lambda m: m["config"]["model"].update(base_channels=10**9), "has an invalid config"),
    (lambda m: m["data"].update(image_size=10**6), "data entry is out of range"),
])
def test_a_checkpoint_whose_config_is_wrong_or_absurd_is_refused_before_allocating(tiny_run, tmp_path, edit, message):
    run = copy_run(tiny_run[0], tmp_path / "run")
    meta = json.loads((run / "last.json").read_text())
    edit(meta)
    (run / "last.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    result = invoke("sample", "--checkpoint", run, "--n", "2", "--out", tmp_path / "g.png", "--device", "cpu")
    assert result.exit_code == 2 and message in one_line(result), result.output
    # refused in under 1 s on the 2-core CI machine (-n 2); 10 s is a tenfold margin for a loaded machine that still
    # fails a command that would build the model first (minutes for the absurd ones, if memory allowed)
    assert time.perf_counter() - start < 10 and not (tmp_path / "g.png").exists()


def test_an_absurd_n_is_refused_up_front(tiny_run, tmp_path):
    for command in ("sample", "eval", "compare"):
        result = invoke(command, "--checkpoint", tiny_run[0], "--n", 10**9, "--device", "cpu")
        assert result.exit_code == 2 and "--n must be at most 200,000 images, got 1,000,000,000" in one_line(result)


class Trap:
    """Unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_eval_never_unpickles_and_checks_npz_headers_before_loading(tmp_path):
    marker = tmp_path / "unpickled"
    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, arr_0=np.array([Trap(marker)] * 3, dtype=object))
    result = invoke("eval", "--npz", hostile)
    assert result.exit_code == 2 and "arr_0 must be uint8 square images shaped (N, H, W) or (N, H, W, C) with C 1 or 3, " \
        "got object" in one_line(result)
    assert not marker.exists()

    labels = tmp_path / "labels.npz"
    np.savez(labels, arr_0=np.zeros((3, 28, 28), np.uint8), arr_1=np.array([Trap(marker)] * 3, dtype=object))
    result = invoke("eval", "--npz", labels)
    assert result.exit_code == 2 and "arr_1 must hold one integer label per image" in one_line(result)
    assert not marker.exists()

    # a header that declares 10 million images over a few bytes of data (a zip bomb's first step)
    bomb = tmp_path / "bomb.npz"
    header = {"descr": "|u1", "fortran_order": False, "shape": (10_000_000, 28, 28)}
    with zipfile.ZipFile(bomb, "w") as archive, archive.open("arr_0.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
    result = invoke("eval", "--npz", bomb)
    assert result.exit_code == 2 and "arr_0 must be at most 200,000 images, got 10,000,000" in one_line(result)

    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, arr_0=np.zeros((3, 28, 28), np.uint8), arr_1=np.array([0, 1, 12]))
    result = invoke("eval", "--npz", out_of_range)
    assert result.exit_code == 2 and "arr_1 labels must be class indices 0..9 (or 10, the null class, for unconditional " \
        "samples), got 0..12" in one_line(result)


# ---- caches --------------------------------------------------------------------------------------------------------
def test_a_half_written_or_damaged_classifier_cache_is_trained_again(tmp_path):
    from tinydiff_cli.evaluation.classifier import classifier_path, get_classifier
    from tinydiff_cli.data.load import load_dataset

    data_dir = make_mnist(tmp_path / "data", n_train=128)  # one batch per epoch: the classifier trains in seconds
    data = load_dataset("mnist", data_dir)
    path = classifier_path(data, data_dir)
    path.write_bytes(b"killed while writing")  # the tensors without their JSON: an eval killed mid-write
    logged = []
    first = get_classifier(data, data_dir, log=logged.append)
    assert any("training the mnist classifier" in line for line in logged)
    path.write_bytes(b"damaged")  # now with its JSON beside it: a damaged cache
    logged.clear()
    again = get_classifier(data, data_dir, log=logged.append)
    assert any("unreadable" in line for line in logged) and any("training the" in line for line in logged)
    assert again.test_accuracy == pytest.approx(first.test_accuracy)
    logged.clear()
    get_classifier(data, data_dir, log=logged.append)
    assert logged == []  # and then it is a cache again
