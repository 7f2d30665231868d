import torch

from tinydiff_cli.guidance import cfg_mix, guided_denoiser
from tinydiff_cli.objectives import split_prediction
from tinydiff_cli.schedules import make_schedule


class LabelModel(torch.nn.Module):
    """Output depends on x, t and the label, so the conditional and unconditional passes differ."""
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels):
        self.calls.append(x.shape[0])
        return 0.3 * x + 0.01 * labels.view(-1, 1, 1, 1).float() + 0.0001 * t.view(-1, 1, 1, 1)


def setup(objective="v"):
    sch = make_schedule("cosine", 1000)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 300, 500, 700])
    labels = torch.tensor([0, 3, 7, 9])
    return sch, x, t, labels, LabelModel()


def test_w0_equals_conditional_prediction_with_one_unbatched_pass():
    sch, x, t, labels, model = setup()
    x0, eps = guided_denoiser(model, sch, "v", labels, 10, w=0.0, clip_x0=False)(x, t)
    x0_ref, eps_ref = split_prediction("v", sch, x, t, model(x, t, labels))
    torch.testing.assert_close(x0, x0_ref)
    torch.testing.assert_close(eps, eps_ref)
    assert model.calls == [4, 4]


def test_guidance_is_ho_salimans_in_eps_space_in_one_batched_pass():
    for objective in ("eps", "x0", "v"):
        sch, x, t, labels, model = setup(objective)
        w = 2.5
        _, eps = guided_denoiser(model, sch, objective, labels, 10, w=w, clip_x0=False)(x, t)
        assert model.calls == [8]  # conditional + unconditional as one forward
        _, eps_c = split_prediction(objective, sch, x, t, model(x, t, labels))
        _, eps_u = split_prediction(objective, sch, x, t, model(x, t, torch.full_like(labels, 10)))
        torch.testing.assert_close(eps, (1 + w) * eps_c - w * eps_u, rtol=1e-4, atol=1e-4)


def test_cfg_mix_convention():
    c, u = torch.tensor([1.0]), torch.tensor([3.0])
    assert cfg_mix(c, u, 0.0).item() == 1.0
    assert cfg_mix(c, u, 1.0).item() == -1.0


def test_clip_keeps_x0_in_range_and_eps_consistent():
    sch, x, t, labels, model = setup()
    x_big = 50 * x
    x0, eps = guided_denoiser(model, sch, "eps", labels, 10, w=1.0)(x_big, t)
    assert x0.abs().max() <= 1.0
    ab = sch.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x_big, rtol=1e-4, atol=1e-3)
