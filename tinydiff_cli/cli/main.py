"""The `tinydiff` command: every command's flags, each handed to its module in this package (imported when the command
runs, so that `--help` and `--version` do not wait for torch). No diffusion logic lives here."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .. import __version__
from ..errors import TinydiffError
from .options import (CheckpointOption, CompileOption, DeviceOption, DigitOption, EtaOption, GuidanceOption,
                      MaxSigmaOption, PrecisionOption, SampleBatchOption, sampling_flags)
from .ui import console, err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tinydiff: train small diffusion models on MNIST and Fashion-MNIST, then sample from them.")


def user_errors(command):
    """Turn a TinydiffError into one red line on stderr and exit status 2, never a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TinydiffError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # an unwritable --out, a full disk, a folder where a file should be
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
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
    preset: Annotated[str, typer.Option(help="Preset name (unet-small, unet-small-fashion, unet-base, dit-small, dit-base, unet-rgb32, unet-rgb64) or a path to a YAML file.")] = "unet-small",
    dataset: Annotated[Optional[str], typer.Option(help="mnist, fashion-mnist, or a folder of images (class subfolders for labels; README: \"Your own images\").")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding MNIST/raw/ etc. \\[default: $TINYDIFF_DATA, else ~/.cache/tinydiff/data]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. \\[default: runs/<preset>, runs/<preset>-on-<dataset> for data other than the preset's own (a folder: its name)]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs to train.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps in total.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Wall-clock budget in minutes: stop cleanly and save.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: DeviceOption = "auto",
    eval_every: Annotated[Optional[int], typer.Option(help="Every N steps, log FID and class accuracy of train.eval_samples samples.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue a run: --resume alone takes <out>/last, or give a checkpoint or run folder.")] = None,
    precision: PrecisionOption = None,
    compile_: CompileOption = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting, e.g. --set train.lr=3e-4 (repeatable).")] = None,
):
    """Train a class-conditional diffusion model; writes checkpoints, loss.csv/png and sample grids.

    Under torchrun (torchrun --nproc_per_node N -m tinydiff_cli train ...) it trains data-parallel: the batch size is
    the global batch, and rank 0 writes."""
    from .train import run_train

    flags = {"data.dataset": dataset, "data.data_dir": data_dir, "train.epochs": epochs, "train.max_steps": max_steps,
             "train.max_minutes": max_minutes, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
             "train.eval_every": eval_every, "train.precision": precision, "train.compile": compile_}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    code = run_train(preset=preset, overrides=list(set_ or []), settings=settings, out=out, device=device, resume=resume)
    raise typer.Exit(code)


@app.command()
@user_errors
@sampling_flags
def sample(
    checkpoint: CheckpointOption = None,
    digit: DigitOption = "all",
    n: Annotated[int, typer.Option(help="Number of images.")] = 100,
    options=None,
    out: Annotated[Path, typer.Option(help="Grid PNG to write.")] = Path("samples.png"),
    npz: Annotated[Optional[Path], typer.Option(help="Also write arr_0 (N,H,W,C) uint8 images ((N,28,28,1) for MNIST) and arr_1 int64 labels.")] = None,
    batch_size: SampleBatchOption = None,
    device: DeviceOption = "auto",
    raw_weights: Annotated[bool, typer.Option("--raw-weights", help="Use the raw training weights instead of the EMA weights.")] = False,
    precision: PrecisionOption = None,
    compile_: CompileOption = None,
):
    """Sample a grid (and optionally an .npz) from a trained checkpoint."""
    from .sample import run_sample

    run_sample(checkpoint=checkpoint, digit=digit, n=n, options=options, out=out, npz=npz, device=device,
               weights="raw" if raw_weights else "ema", precision=precision or "auto", compile=bool(compile_))


@app.command("eval")
@user_errors
@sampling_flags
def eval_(
    checkpoint: CheckpointOption = None,
    npz: Annotated[Optional[Path], typer.Option(help="Score samples saved earlier (arr_0 images, optional arr_1 labels) instead of sampling.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset (mnist, fashion-mnist or an image folder) whose classifier and test split score the samples. \\[default: the checkpoint's, else mnist]")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding MNIST/raw/ etc. \\[default: the checkpoint's, else $TINYDIFF_DATA]")] = None,
    digit: DigitOption = "all",
    n: Annotated[int, typer.Option(help="Number of samples (FID depends on N: compare at equal N).")] = 5000,
    options=None,
    batch_size: SampleBatchOption = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON on stdout (progress goes to stderr).")] = False,
):
    """Score samples: FID in a domain classifier's feature space (with the real-data floor) and class accuracy."""
    from .eval import run_eval

    run_eval(checkpoint=checkpoint, npz=npz, dataset=dataset, data_dir=data_dir, digit=digit, n=n, options=options,
             device=device, as_json=as_json)


visualize_app = typer.Typer(no_args_is_help=True, help="Pictures of what diffusion does: forward noising, schedules, the reverse process.")
app.add_typer(visualize_app, name="visualize")


@visualize_app.command("forward")
@user_errors
def visualize_forward(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist or a folder of images.")] = "mnist",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding MNIST/raw/ etc.")] = None,
    n: Annotated[int, typer.Option(help="Number of test images (rows).")] = 6,
    schedule: Annotated[str, typer.Option(help="linear, cosine or sigmoid.")] = "linear",
    timesteps: Annotated[str, typer.Option(help="Comma-separated t values for the columns (T = 1000).")] = "0,50,100,200,400,600,800,999",
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("forward.png"),
):
    """Real images (rows) noised by q(x_t | x_0) at several t (labelled columns), as one PNG."""
    from .visualize import run_forward

    run_forward(dataset=dataset, data_dir=data_dir, n=n, schedule=schedule, timesteps=timesteps, seed=seed, out=out)


@visualize_app.command("schedule")
@user_errors
def visualize_schedule(
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("schedules.png"),
    T: Annotated[int, typer.Option("--T", help="Number of diffusion steps.")] = 1000,
):
    """alpha_bar_t and log-SNR over t for the linear, cosine and sigmoid schedules, on one labelled chart."""
    from .visualize import run_schedule

    run_schedule(out=out, T=T)


@visualize_app.command("denoise")
@user_errors
@sampling_flags
def visualize_denoise(
    checkpoint: CheckpointOption = None,
    digit: Annotated[Optional[str], typer.Option("--digit", help="Class: index or name, 'all' or 'none'. \\[default: 3; 'all' for a model with fewer classes]")] = None,
    n: Annotated[int, typer.Option(help="Number of samples shown (at most 16).")] = 1,
    options=None,
    out: Annotated[Path, typer.Option(help="Output name: writes NAME.gif (animation) and NAME.png (strip of frames).")] = Path("denoise"),
    device: DeviceOption = "auto",
):
    """The reverse process as an animated GIF and a PNG strip: x_t beside the model's predicted x_0."""
    from .visualize import run_denoise

    run_denoise(checkpoint=checkpoint, digit=digit, n=n, options=options, out=out, device=device)


@visualize_app.command("app")
@user_errors
def visualize_app_command(
    runs: Annotated[Path, typer.Option(help="Folder searched for checkpoints and exported .safetensors models.")] = Path("runs"),
    host: Annotated[str, typer.Option(help="Address to bind; only this machine can connect unless you change it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser window.")] = False,
):
    """An interactive denoising viewer in the browser (needs: pip install 'tinydiff\\[app]')."""
    from .viewer import run_app

    run_app(runs=runs, host=host, port=port, open_browser=not no_browser)


@app.command()
@user_errors
def compare(
    checkpoint: CheckpointOption = None,
    samplers: Annotated[Optional[str], typer.Option(help="Comma-separated samplers from the registry to compare against DDPM. \\[default: all of them]")] = None,
    steps: Annotated[str, typer.Option(help="Comma-separated step counts, each run with every sampler.")] = "5,10,20",
    distilled: Annotated[Optional[list[Path]], typer.Option("--distilled", help="A distilled model (from `tinydiff distill`) to compare too, at its own steps (repeatable).")] = None,
    n: Annotated[int, typer.Option(help="Samples per sampler (FID depends on N: compare at equal N).")] = 50,
    digit: DigitOption = "all",
    w: GuidanceOption = None,
    w_max_sigma: MaxSigmaOption = None,
    eta: EtaOption = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed: every sampler starts from the same noise.")] = 0,
    show: Annotated[int, typer.Option(help="Rows of the side-by-side grid.")] = 10,
    out: Annotated[Path, typer.Option(help="Side-by-side PNG to write.")] = Path("compare.png"),
    plot: Annotated[Path, typer.Option(help="PNG of FID against network evaluations and wall time (with --eval).")] = Path("compare_frontier.png"),
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Score each sampler with FID and class accuracy.")] = True,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data folder for the scores. \\[default: the checkpoint's]")] = None,
    batch_size: SampleBatchOption = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
):
    """DDPM (all T steps) against every other sampler at several step counts, and distilled models.

    It reports network evaluations, time, speed-up, FID and class accuracy, and plots FID against evaluations and
    time."""
    from .common import SamplingOptions
    from .compare import run_compare

    options = SamplingOptions(eta=eta, w=w, seed=seed, batch_size=batch_size, w_max_sigma=w_max_sigma)
    run_compare(checkpoint=checkpoint, samplers=samplers, steps=steps, distilled=list(distilled or []), n=n,
                digit=digit, options=options, show=show, out=out, plot=plot, evaluate=evaluate, data_dir=data_dir,
                device=device, as_json=as_json)


@app.command()
@user_errors
def distill(
    checkpoint: CheckpointOption = None,
    steps: Annotated[int, typer.Option(help="Sampling steps of the distilled model: 1, 2 or 4.")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the distilled model. \\[default: runs/<run>-<steps>step]")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Wall-clock budget for all stages, split evenly; 0: no time limit (stages end after --stage-iterations). \\[default: 20]")] = None,
    teacher_steps: Annotated[int, typer.Option(help="DDIM steps of the teacher grid the halving starts from (--steps times a power of 2).")] = 8,
    w_max: Annotated[float, typer.Option(help="Largest guidance weight the student learns (it learns w in [0, w_max]).")] = 2.0,
    stage_iterations: Annotated[int, typer.Option(help="Optimizer steps per stage at most.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate of each stage (warm-up, then cosine decay).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Training data folder. \\[default: the checkpoint's]")] = None,
    device: DeviceOption = "auto",
    resume: Annotated[Optional[str], typer.Option(help="Continue a distillation: --resume alone takes --out, or give its folder.")] = None,
):
    """Distil a checkpoint to 1-4 sampling steps: guidance into the network, then progressive halving."""
    from .distill import run_distill
    from ..training.distill import DistillSettings

    settings = DistillSettings(steps=steps, teacher_steps=teacher_steps, w_max=w_max, stage_iterations=stage_iterations,
                               batch_size=batch_size, lr=lr, seed=seed,
                               # a new run: 20 by default, 0 for none; a resume: the stored budget unless given
                               max_minutes=(20.0 if max_minutes is None else max_minutes or None) if resume is None else max_minutes)
    code = run_distill(checkpoint=checkpoint, settings=settings, out=out, data_dir=str(data_dir) if data_dir else None,
                       device=device, resume=resume)
    raise typer.Exit(code)


@app.command()
@user_errors
def export(
    checkpoint: CheckpointOption = None,
    format: Annotated[str, typer.Option("--format", help="safetensors (EMA weights + config), onnx or pt2 (torch.export).")] = "safetensors",
    out: Annotated[Optional[Path], typer.Option(help="File to write. \\[default: <preset>-step<N>.<format>]")] = None,
):
    """Export the EMA denoiser: a self-contained safetensors file, ONNX (checked with onnxruntime) or torch.export."""
    from .export import run_export

    run_export(checkpoint=checkpoint, fmt=format, out=out)


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
