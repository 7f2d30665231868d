import json

import pytest
import torch

from tinydiff_cli.checkpoint import load_checkpoint
from tinydiff_cli.pipeline import Pipeline
from tinydiff_cli.config import load_config
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.training import Trainer, lr_at


class Quiet:
    def start(self, total, step): pass
    def update(self, step, metrics): pass
    def log(self, message): pass
    def finish(self): pass


def make_trainer(tiny_preset, data_dir, out, **overrides):
    items = [f"data.data_dir={data_dir}", "train.sample_rows=0", "train.eval_images=0"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return Trainer(load_config(str(tiny_preset), items), out, torch.device("cpu"), Quiet())


class StopAt(Quiet):
    """Asks the trainer to stop after a given step, as Ctrl-C does."""

    def __init__(self, step):
        self.step, self.trainer = step, None

    def update(self, step, metrics):
        if step == self.step:
            self.trainer.request_stop()


def test_interrupted_run_resumes_exactly_where_it_stopped(tiny_preset, data_dir, tmp_path):
    straight = make_trainer(tiny_preset, data_dir, tmp_path / "a", **{"train.max_steps": 6})
    straight.run()

    first = make_trainer(tiny_preset, data_dir, tmp_path / "b", **{"train.max_steps": 6})
    first.reporter = StopAt(3)
    first.reporter.trainer = first
    assert first.run().stop_reason == "interrupted"
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt.step == 3
    second = make_trainer(tiny_preset, data_dir, tmp_path / "b", **{"train.max_steps": 6})
    second.load_state(ckpt)
    result = second.run()
    assert result.step == 6
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    for a, b in zip(straight.ema.ema_model.state_dict().values(), second.ema.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b)
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6"]  # rows from before the resume point are kept, none duplicated


def test_checkpoint_holds_config_and_loads_ema_weights(tiny_preset, data_dir, tmp_path):
    trainer = make_trainer(tiny_preset, data_dir, tmp_path, **{"train.max_steps": 2})
    trainer.run()
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["step"] == 2 and meta["config"]["diffusion"]["timesteps"] == 50
    assert meta["data"]["num_classes"] == 10
    model = Pipeline.from_checkpoint(tmp_path / "last.safetensors").model
    for a, b in zip(model.state_dict().values(), trainer.ema.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_loss_falls_on_an_easy_dataset(tiny_preset, data_dir, tmp_path):
    trainer = make_trainer(tiny_preset, data_dir, tmp_path, **{"train.max_steps": 40, "train.lr": 3e-3})
    losses = []
    for step in range(40):
        losses.append(trainer.train_step(3e-3).item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_broken_checkpoints_are_reported(tmp_path, tiny_preset, data_dir):
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(TinydiffError, match="not a tinydiff checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "last.json").write_text('{"format": "something-else"}')
    with pytest.raises(TinydiffError, match="not a tinydiff checkpoint"):
        load_checkpoint(tmp_path)
    trainer = make_trainer(tiny_preset, data_dir, tmp_path / "run", **{"train.max_steps": 2})
    trainer.run()
    meta = json.loads((tmp_path / "run" / "last.json").read_text())
    meta["step"], meta["elapsed_s"] = 1, 0.0  # as if the run died after writing step 2's tensors, before its JSON
    (tmp_path / "run" / "last.json").write_text(json.dumps(meta))
    recovered = load_checkpoint(tmp_path / "run")
    assert recovered.step == 2 and recovered.meta["recovered_from_tensors"]
    assert recovered.meta["elapsed_s"] > 0
    (tmp_path / "run" / "last.safetensors").write_bytes(b"garbage")
    with pytest.raises(TinydiffError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "run")


def test_lr_warms_up_then_follows_cosine():
    cfg = load_config("unet-small", ["train.lr=1.0", "train.warmup_steps=10"])
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 0.5) == pytest.approx(0.5)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(0.0)
