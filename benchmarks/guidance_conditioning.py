"""How far the guided x_0 is from its float64 value when guidance mixes the network's output (what tinydiff does)
versus when it mixes eps and re-derives x_0 = x - sigma eps (what it did before 0.3).

The network's float32 outputs are taken as exact, so only the mixing and conversions are measured:

    python benchmarks/guidance_conditioning.py tests/fixtures/compat/dit_v_cosine.safetensors runs/dit-small
"""
import sys

import torch

from tinydiff_cli.diffusion.guidance import cfg_mix
from tinydiff_cli.diffusion.schedules import make_betas
from tinydiff_cli.sampling.pipeline import Pipeline


def exact_x0(name: str, x: torch.Tensor, output: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from a network output in float64."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return {"eps": (x - s * output) / a, "x0": output, "v": a * x - s * output}[name]


def main(paths: list[str], w: float = 2.0, n: int = 20) -> None:
    for path in paths:
        pipe = Pipeline.from_checkpoint(path)
        form, cfg = pipe.formulation, pipe.checkpoint.config.diffusion
        alpha_bar64 = torch.cumprod(1 - make_betas(cfg.schedule, cfg.timesteps), 0)
        x = torch.randn(n, *pipe.image_shape, generator=torch.Generator().manual_seed(0))
        labels = pipe.labels("all", n)
        for t_i in (pipe.T - 1, pipe.T // 2, 1):
            t = torch.full((n,), t_i)
            with torch.no_grad():
                cond, uncond = pipe.model(x, t, labels), pipe.model(x, t, torch.full_like(labels, pipe.null_class))
            reference = exact_x0(form.name, x.double(), cfg_mix(cond.double(), uncond.double(), w), alpha_bar64[t_i])
            sigma = pipe.schedule.sigmas[t_i]
            x_sigma = x / pipe.schedule.sqrt_alpha_bar[t_i]  # the engine's x = x_0 + sigma eps
            mixed_output = form.to_x0(x_sigma, sigma, cfg_mix(cond, uncond, w))
            eps_of = lambda out: (x_sigma - form.to_x0(x_sigma, sigma, out)) / sigma  # noqa: E731
            mixed_eps = x_sigma - sigma * cfg_mix(eps_of(cond), eps_of(uncond), w)
            print(f"{path} ({form.name}, {cfg.schedule}) t={t_i:4d} alpha_bar={alpha_bar64[t_i]:.2e}, w={w:g}: "
                  f"max |x0 - float64|: output mix {(mixed_output.double() - reference).abs().max():.1e}, "
                  f"eps mix {(mixed_eps.double() - reference).abs().max():.1e}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tests/fixtures/compat/dit_v_cosine.safetensors", "tests/fixtures/compat/unet_x0_sigmoid.safetensors"])
