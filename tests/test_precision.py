"""--precision and --compile: autocast with float32 outputs, fp16 with a grad scaler, and refusals where a device
would run a precision badly (issue 16)."""
import pytest
import torch
from typer.testing import CliRunner

from tinydiff_cli.cli import app
from tinydiff_cli.config import load_config
from tinydiff_cli.errors import TinydiffError
from tinydiff_cli.models import build_model
from tinydiff_cli.precision import Autocast, cpu_has_native_bf16, prepare, resolve_precision


def test_auto_is_fp32_on_a_cpu_and_slow_precisions_are_refused():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(TinydiffError, match="fp16 is for CUDA GPUs"):
        resolve_precision("fp16", cpu)
    if cpu_has_native_bf16():
        assert resolve_precision("bf16", cpu) == "bf16"
    else:
        with pytest.raises(TinydiffError, match="no native bfloat16"):
            resolve_precision("bf16", cpu)


def test_the_cli_refuses_before_writing(tiny_preset, data_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "--preset", str(tiny_preset), "--data-dir", str(data_dir), "--out",
                                      str(tmp_path / "run"), "--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 2 and "--precision fp16 is for CUDA GPUs" in result.output
    assert not (tmp_path / "run").exists()


def test_autocast_runs_in_bf16_and_returns_float32():
    cfg = load_config("unet-small", ["model.base_channels=8", "model.channel_mults=[1, 2]", "model.groups=4",
                                     "model.attn_resolutions=[]"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # the output layer starts at zero; give every weight a value
        for p in model.parameters():
            p.normal_(0, 0.2)
    x, t, labels = torch.randn(3, 1, 28, 28), torch.tensor([1, 500, 999]), torch.tensor([0, 5, 10])
    wrapped = prepare(model, "bf16")
    assert isinstance(wrapped, Autocast) and prepare(model, "fp32") is model
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in model.state_dict()}  # no parameters of its own
    with torch.no_grad():
        exact, half = model(x, t, labels), wrapped(x, t, labels)
    assert half.dtype == torch.float32
    assert 0 < (half - exact).abs().max() < 0.05 * exact.abs().max()  # bf16 arithmetic: close, not equal


def test_fp16_training_steps_with_a_grad_scaler_and_stops_when_it_keeps_overflowing(data_dir, tmp_path, monkeypatch):
    """The engine takes fp16 on a CPU too (the CLI refuses it there as slow), which lets the scaler path run here."""
    import tinydiff_cli.training as training

    cfg = load_config("unet-small", ["model.base_channels=8", "model.channel_mults=[1, 2]", "model.groups=4",
                                     "model.attn_resolutions=[]", "diffusion.timesteps=50", "train.batch_size=32",
                                     "train.precision=fp16", f"data.data_dir={data_dir}"])
    trainer = training.Trainer(cfg, tmp_path / "run", "cpu")
    assert trainer.scaler is not None
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(3):
        assert torch.isfinite(trainer.train_step(1e-3))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # it learns

    real_loss = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss", lambda *a, **k: real_loss(*a, **k) * float("inf"))
    trainer.loop.fp16_patience = 3
    kept = [p.detach().clone() for p in trainer.model.parameters()]
    scale = trainer.scaler.get_scale()
    for _ in range(2):  # overflowed steps are skipped, and the scale backs off
        trainer.train_step(1e-3)
    assert all(torch.equal(a, b) for a, b in zip(kept, trainer.model.parameters()))
    assert trainer.scaler.get_scale() < scale
    with pytest.raises(training.Diverged, match="fp16 gradients overflowed 3 steps in a row"):
        trainer.train_step(1e-3)
