"""The flags that several commands share, declared once, and `sampling_flags`, which turns the sampler flags into one
`common.SamplingOptions`. Nothing here imports torch: `tinydiff --help` should not wait for it."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

GUIDANCE_HELP = ("Classifier-free guidance weight w, Ho & Salimans convention: "
                 "eps = (1 + w) * eps(x, class) - w * eps(x, null); w = 0 is plain conditional sampling.")


def sampler_name(value: str) -> str:
    """A --sampler value, checked against the engine's registry when the flag is used (importing the registry
    imports torch, which `tinydiff --version` and --help should not wait for)."""
    from ..diffusion.sampling import check_sampler

    try:
        check_sampler(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return value


# Options that several commands share, declared once.
CheckpointOption = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Checkpoint (.json/.safetensors), exported .safetensors or run folder. \\[default: newest under runs/]")]
DdimOption = Annotated[Optional[int], typer.Option("--ddim", help="DDIM with this many steps: short for --sampler ddim --steps N.")]
SamplerOption = Annotated[Optional[str], typer.Option(
    "--sampler", parser=sampler_name, metavar="NAME",
    help="A sampler of the engine's registry, tinydiff_cli.diffusion.sampling.SAMPLERS (an unknown name lists them). \\[default: dpm++2m with 10 steps; a distilled model's own]")]
StepsOption = Annotated[Optional[int], typer.Option("--steps", help="Sampler steps. \\[default: 10 without --sampler (a distilled model: its own), all T with it]")]
EtaOption = Annotated[float, typer.Option("--eta", help="Sampler noise eta in [0, 1], for samplers that take it (DDIM): 0 deterministic, 1 DDPM-like noise.")]
GuidanceOption = Annotated[Optional[float], typer.Option(
    "--w", help=GUIDANCE_HELP + " \\[default: the model's own, train.sample_w: 0.5 for unet-small, 2 for unet-small-fashion, 1 for the other presets]")]
MaxSigmaOption = Annotated[Optional[float], typer.Option(
    "--w-max-sigma", help="Apply guidance only at the steps whose noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) is at most this (Kynkaanniemi et al. 2024); elsewhere the conditional prediction, one network pass. inf: every step. \\[default: the model's own, train.sample_w_max_sigma; every step for every preset]")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]
DigitOption = Annotated[str, typer.Option("--digit", help="Class: its index (0-9 for MNIST) or its name (an image folder's class subfolder), 'all' (classes cycle: one per grid column) or 'none' (unconditional).")]
SampleBatchOption = Annotated[Optional[int], typer.Option(
    "--batch-size", help="Images per forward batch. \\[default: 100 on CPU, 1000 on a GPU]")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cuda, mps or cpu.")]
PrecisionOption = Annotated[Optional[str], typer.Option(
    "--precision", help="fp32, bf16 or fp16 (autocast; fp16 training uses a grad scaler) or auto: bf16 on a GPU that supports it, else fp32. \\[default: auto]")]
CompileOption = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model (slow to start; pays off on long runs and GPUs). \\[default: no]")]


# The sampler flags of `sample`, `eval` and `visualize denoise`: name -> (declaration, default).
SAMPLING_FLAGS = {"ddim": (DdimOption, None), "sampler": (SamplerOption, None), "steps": (StepsOption, None),
                  "eta": (EtaOption, 0.0), "w": (GuidanceOption, None), "w_max_sigma": (MaxSigmaOption, None),
                  "seed": (SeedOption, 0)}


def sampling_flags(command):
    """Declare SAMPLING_FLAGS on a command where it has an `options` parameter, and call it with one
    commands.common.SamplingOptions built from them (and from --batch-size, when the command has that flag)."""
    params = []
    for p in inspect.signature(command, eval_str=True).parameters.values():
        if p.name != "options":
            params.append(p)
            continue
        params += [inspect.Parameter(name, p.POSITIONAL_OR_KEYWORD, default=default, annotation=declaration)
                   for name, (declaration, default) in SAMPLING_FLAGS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        from .common import SamplingOptions

        flags = {name: kwargs.pop(name) for name in SAMPLING_FLAGS}
        options = SamplingOptions.from_flags(**flags, batch_size=kwargs.pop("batch_size", None))
        return command(**kwargs, options=options)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
