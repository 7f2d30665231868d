"""How far the guided x_0 is from its float64 value when guidance mixes the network's output (what tinydiff does)
versus when it mixes eps and re-derives x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (what it did before).

The network's float32 outputs are taken as exact, so only the mixing and conversions are measured:

    python benchmarks/guidance_conditioning.py tests/fixtures/compat/dit_v_cosine.safetensors runs/dit-small
"""
import sys

import torch

from tinydiff_cli.guidance import cfg_mix
from tinydiff_cli.parameterization import predict_x0_from_eps
from tinydiff_cli.pipeline import Pipeline
from tinydiff_cli.schedules import make_betas


def exact_x0(name: str, x: torch.Tensor, output: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from a network output in float64."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return {"eps": (x - s * output) / a, "x0": output, "v": a * x - s * output}[name]


def main(paths: list[str], w: float = 2.0, n: int = 20) -> None:
    for path in paths:
        pipe = Pipeline.from_checkpoint(path)
        param, cfg = pipe.parameterization, pipe.checkpoint.config.diffusion
        alpha_bar64 = torch.cumprod(1 - make_betas(cfg.schedule, cfg.timesteps), 0)
        x = torch.randn(n, *pipe.image_shape, generator=torch.Generator().manual_seed(0))
        labels = pipe.labels("all", n)
        for t_i in (pipe.T - 1, pipe.T // 2, 1):
            t = torch.full((n,), t_i)
            with torch.no_grad():
                cond, uncond = pipe.model(x, t, labels), pipe.model(x, t, torch.full_like(labels, pipe.null_class))
            reference = exact_x0(param.name, x.double(), cfg_mix(cond.double(), uncond.double(), w), alpha_bar64[t_i])
            mixed_output, _ = param.to_x0_eps(pipe.schedule, x, t, cfg_mix(cond, uncond, w))
            eps_c, eps_u = param.to_x0_eps(pipe.schedule, x, t, cond)[1], param.to_x0_eps(pipe.schedule, x, t, uncond)[1]
            mixed_eps = predict_x0_from_eps(pipe.schedule, x, t, cfg_mix(eps_c, eps_u, w))
            print(f"{path} ({param.name}, {cfg.schedule}) t={t_i:4d} alpha_bar={alpha_bar64[t_i]:.2e}, w={w:g}: "
                  f"max |x0 - float64|: output mix {(mixed_output.double() - reference).abs().max():.1e}, "
                  f"eps mix {(mixed_eps.double() - reference).abs().max():.1e}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tests/fixtures/compat/dit_v_cosine.safetensors", "tests/fixtures/compat/unet_x0_sigmoid.safetensors"])
