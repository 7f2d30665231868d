import json
import math

import pytest
import torch

from tinydiff_cli.io.checkpoint import load_checkpoint
from tinydiff_cli.sampling.pipeline import Pipeline
from tinydiff_cli.config import load_config
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.training.loop import Budget, LRSchedule
from tinydiff_cli.training.trainer import Trainer, lr_schedule


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


def test_lr_warms_up_then_decays_from_the_end_of_warm_up():
    cfg = load_config("unet-small", ["train.lr=1.0", "train.warmup_steps=10"])
    lr = lr_schedule(cfg)
    assert lr(0, 0.0) == pytest.approx(0.1) and lr(9, 0.09) == pytest.approx(1.0)  # linear: (step + 1) / warmup
    # 100 steps in all: warm-up ends at progress 0.1, and the cosine runs over the 90 steps after it
    assert lr(10, 0.10, decay_start=0.1) == pytest.approx(1.0)  # the peak where the decay begins, not cos(0.1 pi)
    assert lr(55, 0.55, decay_start=0.1) == pytest.approx(0.5)  # half-way through the decay
    assert lr(77, 0.775, decay_start=0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr(100, 1.0, decay_start=0.1) == pytest.approx(0.0)
    assert LRSchedule(1.0, 10, cosine=False)(50, 0.5, 0.1) == 1.0


def test_the_loop_records_where_warm_up_ended_and_a_resume_keeps_it(tiny_preset, data_dir, tmp_path):
    """The decay starts at the progress the run had reached when warm-up ended (by steps here), and a resumed run
    continues the same curve."""
    trainer = make_trainer(tiny_preset, data_dir, tmp_path, **{"train.max_steps": 8, "train.warmup_steps": 3})
    loop, peak = trainer.loop, trainer.cfg.train.lr
    loop.budget = Budget(8, seconds=1e6)  # a clock far from its end: progress by steps
    rates = []
    for _ in range(6):
        rates.append(loop.lr())
        loop.train_step(rates[-1])
    assert loop.lr_decay_start == pytest.approx(3 / 8)
    assert rates[:4] == pytest.approx([peak / 3, 2 * peak / 3, peak, peak])
    assert rates[5] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * (5 / 8 - 3 / 8) / (5 / 8))))
    trainer.save("last", loop.elapsed())
    resumed = make_trainer(tiny_preset, data_dir, tmp_path / "again", **{"train.max_steps": 8, "train.warmup_steps": 3})
    resumed.load_state(load_checkpoint(tmp_path))
    assert resumed.loop.lr_decay_start == pytest.approx(3 / 8) and resumed.step == 6
    assert resumed.loop.lr() == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * (6 / 8 - 3 / 8) / (5 / 8))))
    loop.elapsed_before = 2e6  # the clock is out: the decay is done, whatever the steps say
    assert loop.lr() == 0.0
