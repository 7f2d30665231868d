import pytest
import torch

from tinydiff_cli.training.ema import EMA, ema_decay_at


def test_decay_warms_up_then_caps():
    assert ema_decay_at(0, 0.999, 10) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, 10) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999, 10) == 0.999
    assert ema_decay_at(0, 0.99, 0) == 0.99


def test_update_averages_parameters_and_copies_buffers_without_touching_the_model():
    model = torch.nn.BatchNorm1d(3)  # weight/bias parameters, running_mean buffer
    ema = EMA(model, decay=0.9, warmup=0)
    with torch.no_grad():
        model.weight.fill_(2.0)  # ema starts at 1.0
        model.running_mean.fill_(5.0)
    ema.update(model, step=1)
    torch.testing.assert_close(ema.ema_model.weight, torch.full((3,), 1.1))
    torch.testing.assert_close(ema.ema_model.running_mean, torch.full((3,), 5.0))
    with torch.no_grad():
        ema.ema_model.weight.fill_(-7.0)
    assert torch.all(model.weight == 2.0)  # the copy never leaks back
    assert not ema.ema_model.weight.requires_grad
