"""What the viewer does, without Streamlit: find models, load one, generate a trajectory, render frames.

The page script (streamlit_app.py) only lays out widgets; generation goes through the same engine method
as `tinydiff visualize denoise` (`Pipeline.trajectory`), so there is no second sampler or guidance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.checkpoint import FORMAT, MODEL_FORMAT
from ..data.datasets import to_uint8
from ..io.images import encode_gif, trajectory_frames, upscale
from ..sampling.pipeline import Pipeline, Trajectory
from ..diffusion.sampling import FULL_GRID_ONLY, sampler_options
from ..sampling.visualize import frames_with_result, pick_frames

model_forward_calls = 0  # counts denoiser forwards in this process; the tests check that scrubbing adds none


@dataclass
class ModelEntry:
    path: Path
    label: str


def describe_file(path: Path, root: Path) -> str:
    """'<file>: <backbone>, <preset>, <dataset>, step N' from the file's metadata, read cheaply."""
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    try:
        if path.suffix == ".json":
            meta = json.loads(path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError
            config, data, step = meta["config"], meta.get("data", {}), meta["step"]
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError
            config, data, step = json.loads(meta["config"]), json.loads(meta.get("data", "{}")), meta["step"]
        dataset = str(data.get("dataset", config["data"]["dataset"]))
        return f"{name}: {config['model']['type']}, {config.get('preset', '?')}, {Path(dataset).name}, step {step}"
    except Exception:
        return f"{name}: not a readable tinydiff model"


def find_models(root: str | Path) -> list[ModelEntry]:
    """Training checkpoints (*.json with a .safetensors beside them) and exported *.safetensors under root,
    newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    paths = [p for p in root.rglob("*.json") if p.with_suffix(".safetensors").exists()]
    paths += [p for p in root.rglob("*.safetensors") if not p.with_suffix(".json").exists()]
    paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [ModelEntry(p, describe_file(p, root)) for p in paths]


def load(path: str | Path, device="cpu") -> Pipeline:
    """Load a model for the viewer; a TinydiffError carries the message for the page."""
    pipe = Pipeline.from_checkpoint(path, device=device)

    def count(module, inputs, output):
        global model_forward_calls
        model_forward_calls += 1

    pipe.model.register_forward_hook(count)
    return pipe


def sampler_controls(sampler: str) -> tuple[bool, bool]:
    """Which controls the sampler uses: (a number of steps, eta)."""
    return sampler not in FULL_GRID_ONLY, "eta" in sampler_options(sampler, eta=0.0)


def generate(pipe: Pipeline, *, label: int | None, sampler: str, steps: int | None, eta: float, w: float,
             seed: int) -> Trajectory:
    """One sample's whole trajectory. label None is unconditional; sampler is a name from samplers.SAMPLERS. The
    settings go through the one sampling plan (a TinydiffError says what is wrong with them)."""
    labels = torch.tensor([pipe.null_class if label is None else label])
    return pipe.trajectory(labels, pipe.plan(sampler, steps, eta=eta, w=w), seed=seed)


@dataclass
class Frames:
    """Everything the page shows, rendered once per generation; the slider only indexes into it."""

    x: torch.Tensor  # uint8 (steps + 1, H*scale, W*scale[, 3]): the x_t the model saw at each step, then the result
    x0: torch.Tensor  # uint8, the predicted x_0 at each step, then the result
    captions: list[str]
    strip: torch.Tensor  # uint8 (H*scale, k*(W*scale)): a strip of up to 12 steps of x_t over predicted x_0
    gif: bytes


def as_pixels(images: torch.Tensor, scale: int) -> torch.Tensor:
    """float (F, C, H, W) in [-1, 1] -> uint8 (F, H*s, W*s) for grey, (F, H*s, W*s, 3) for RGB: what st.image shows."""
    pixels = upscale(to_uint8(images).permute(0, 3, 1, 2), scale)  # (F, C, H*s, W*s)
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.permute(0, 2, 3, 1).contiguous()


def render(traj: Trajectory, scale: int = 8) -> Frames:
    steps = traj.steps
    x, x0 = frames_with_result(traj, list(range(steps)))
    x, x0 = x[:, 0], x0[:, 0]  # the viewer shows one sample
    as_uint8 = lambda images: as_pixels(images, scale)  # noqa: E731
    captions = [f"step {i + 1}/{steps}: {traj.step_label(i).replace('=', ' = ')}, ᾱ = {ab:.4f}, log-SNR = {snr:+.2f}"
                for i, (ab, snr) in enumerate(zip(traj.alpha_bar, traj.log_snr))]
    captions.append(f"result after {steps} steps: the sample x_0")
    shown = pick_frames(steps + 1, 12)
    strip = torch.cat([torch.cat([as_uint8(x[shown]), as_uint8(x0[shown])], dim=1)[i] for i in range(len(shown))], dim=1)
    gif = encode_gif(trajectory_frames(*frames_with_result(traj, pick_frames(steps, 60)), scale=4))
    return Frames(as_uint8(x), as_uint8(x0), captions, strip, gif)
