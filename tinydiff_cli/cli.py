"""The `tinydiff` command: parse options, call the engine, print. No diffusion logic lives here."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import TinydiffError
from .ui import console, err_console

GUIDANCE_HELP = ("Classifier-free guidance weight w, Ho & Salimans convention: "
                 "eps = (1 + w) * eps(x, class) - w * eps(x, null); w = 0 is plain conditional sampling.")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tinydiff: train small diffusion models on MNIST and Fashion-MNIST, then sample from them.")


def user_errors(command):
    """Turn a TinydiffError into one red line on stderr and exit status 2, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TinydiffError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("aborted")
            raise typer.Exit(130) from None
    return wrapper


def _version(value: bool):
    if value:
        console.print(f"tinydiff {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False):
    """tinydiff: train small diffusion models on MNIST and Fashion-MNIST, then sample from them."""


@app.command()
@user_errors
def train(
    preset: Annotated[str, typer.Option(help="Preset name (unet-small, unet-base) or a path to a YAML file.")] = "unet-small",
    dataset: Annotated[Optional[str], typer.Option(help="mnist or fashion-mnist.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding MNIST/raw/ etc. \\[default: $TINYDIFF_DATA, else ~/.cache/tinydiff/data]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. \\[default: runs/<preset>]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs to train.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps in total.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Wall-clock budget in minutes: stop cleanly and save.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cuda, mps or cpu.")] = "auto",
    eval_every: Annotated[Optional[int], typer.Option(help="Every N steps, log FID and class accuracy of train.eval_samples samples.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue a run: --resume alone takes <out>/last, or give a checkpoint or run folder.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting, e.g. --set train.lr=3e-4 (repeatable).")] = None,
):
    """Train a class-conditional diffusion model; writes checkpoints, loss.csv/png and sample grids."""
    from .commands.train import run_train

    flags = {"data.dataset": dataset, "data.data_dir": data_dir, "train.epochs": epochs, "train.max_steps": max_steps,
             "train.max_minutes": max_minutes, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed, "train.eval_every": eval_every}
    overrides = list(set_ or []) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    code = run_train(preset=preset, overrides=overrides, out=out, device=device, resume=resume)
    raise typer.Exit(code)


@app.command()
@user_errors
def sample(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint (.json/.safetensors) or run folder. \\[default: newest under runs/]")] = None,
    digit: Annotated[str, typer.Option(help="Class 0-9, 'all' (one class per grid column) or 'none' (unconditional).")] = "all",
    n: Annotated[int, typer.Option(help="Number of images.")] = 100,
    ddim: Annotated[Optional[int], typer.Option(help="DDIM with this many steps; absent: DDPM over all T steps.")] = None,
    eta: Annotated[float, typer.Option(help="DDIM eta in [0, 1]: 0 deterministic, 1 DDPM-like noise.")] = 0.0,
    w: Annotated[float, typer.Option(help=GUIDANCE_HELP)] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Grid PNG to write.")] = Path("samples.png"),
    npz: Annotated[Optional[Path], typer.Option(help="Also write arr_0 (N,28,28,1) uint8 images and arr_1 int64 labels.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward batch.")] = 500,
    device: Annotated[str, typer.Option(help="auto, cuda, mps or cpu.")] = "auto",
    raw_weights: Annotated[bool, typer.Option("--raw-weights", help="Use the raw training weights instead of the EMA weights.")] = False,
):
    """Sample a grid (and optionally an .npz) from a trained checkpoint."""
    from .commands.sample import run_sample

    run_sample(checkpoint=checkpoint, digit=digit, n=n, ddim=ddim, eta=eta, w=w, seed=seed, out=out, npz=npz,
               batch_size=batch_size, device=device, use_ema=not raw_weights)


@app.command("eval")
@user_errors
def eval_(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint or run folder to sample from. \\[default: newest under runs/]")] = None,
    npz: Annotated[Optional[Path], typer.Option(help="Score samples saved earlier (arr_0 images, optional arr_1 labels) instead of sampling.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset whose classifier and test split score the samples. \\[default: the checkpoint's, else mnist]")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding MNIST/raw/ etc. \\[default: the checkpoint's, else $TINYDIFF_DATA]")] = None,
    digit: Annotated[str, typer.Option(help="Class 0-9, 'all' or 'none' (unconditional).")] = "all",
    n: Annotated[int, typer.Option(help="Number of samples (FID depends on N: compare at equal N).")] = 5000,
    ddim: Annotated[Optional[int], typer.Option(help="DDIM steps; absent: DDPM over all T steps.")] = None,
    eta: Annotated[float, typer.Option(help="DDIM eta in [0, 1].")] = 0.0,
    w: Annotated[float, typer.Option(help=GUIDANCE_HELP)] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward batch.")] = 500,
    device: Annotated[str, typer.Option(help="auto, cuda, mps or cpu.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON on stdout (progress goes to stderr).")] = False,
):
    """Score samples: FID in a domain classifier's feature space (with the real-data floor) and class accuracy."""
    from .commands.eval import run_eval

    run_eval(checkpoint=checkpoint, npz=npz, dataset=dataset, data_dir=data_dir, digit=digit, n=n, ddim=ddim, eta=eta,
             w=w, seed=seed, batch_size=batch_size, device=device, as_json=as_json)


def normalize_argv(argv: list[str]) -> list[str]:
    """`--resume` may stand alone (meaning <out>/last); Typer options need a value, so give it one."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("last")
    return out


def main() -> None:
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    app()
