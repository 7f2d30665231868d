"""Shipping a trained denoiser: EMA weights as safetensors (config in the metadata), ONNX, or torch.export.

Every exported denoiser has the same interface: (x_t float (B, C, H, W), t (B,), labels int64 (B,)) -> the network's
output, shaped like x_t, which the config's diffusion.objective turns into x_0 (formulations.py). t is the int64
timestep for eps, x0 and v; for edm and flow it is the float time input c_noise(sigma), and x_t is c_in(sigma) x. A distilled
student (`tinydiff distill`) takes a fourth input, w float (B,), the guidance weight. Each function
takes the Pipeline whose EMA model it ships.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import torch

from .. import __version__
from ..io.atomic import atomic_path
from ..io.checkpoint import MODEL_FORMAT, write_safetensors
from ..errors import TinydiffError
from .pipeline import Pipeline

FORMATS = ("safetensors", "onnx", "pt2")


def input_names(pipe: Pipeline) -> list[str]:
    """The model's inputs: x_t, t, labels, and w for a student that takes the guidance weight."""
    return ["x_t", "t", "labels"] + (["w"] if pipe.takes_w else [])


def example_inputs(pipe: Pipeline, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs (see input_names) on the pipeline's device for its image shape, T and classes (the null class
    included) and, for a distilled student, w in its range."""
    g = torch.Generator().manual_seed(seed)
    form = pipe.formulation
    t = (torch.randint(0, pipe.T, (batch,), generator=g) if form.discrete
         else form.c_noise(form.sigma_max ** torch.rand(batch, generator=g)))  # sigma in [1, sigma_max]
    inputs = [torch.randn(batch, *pipe.image_shape, generator=g), t,
              torch.randint(0, pipe.num_classes + 1, (batch,), generator=g)]
    if pipe.takes_w:
        low, high = (pipe.distilled.w_min, pipe.distilled.w_max) if pipe.distilled else (0.0, 2.0)
        inputs.append(low + (high - low) * torch.rand(batch, generator=g))
    return tuple(x.to(pipe.device) for x in inputs)


def _dynamic_batch(pipe: Pipeline) -> dict:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return {name: {0: batch} for name in ["x", "t", "labels", "w"][:len(input_names(pipe))]}


def export_safetensors(pipe: Pipeline, path: Path) -> Path:
    """The weights the pipeline samples with (EMA); the config and data facts ride in the file's metadata, so it is
    self-contained. Needs a pipeline loaded from a checkpoint."""
    ckpt = pipe.checkpoint
    weights = {f"ema.{k}": v.detach().contiguous().cpu() for k, v in pipe.model.state_dict().items()}
    metadata = {"format": MODEL_FORMAT, "step": str(ckpt.step), "tinydiff_version": __version__,
                "config": json.dumps(ckpt.meta["config"]), "data": json.dumps(ckpt.data.to_meta())}
    if ckpt.distilled is not None:  # a distilled student keeps its sampler, steps and w range
        metadata["distilled"] = json.dumps(ckpt.distilled.to_meta())
    write_safetensors(path, weights, metadata)
    return path


def export_onnx(pipe: Pipeline, path: Path) -> Path:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise TinydiffError("ONNX export needs the onnx extra: pip install 'tinydiff[onnx]', or '.[onnx]' in a clone of the repository")
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis naming are not actionable for users
        torch.onnx.export(pipe.model, example_inputs(pipe), str(tmp), input_names=input_names(pipe),
                          output_names=["prediction"], dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=_dynamic_batch(pipe))
    return path


def check_onnx(pipe: Pipeline, path: Path, batch: int = 5) -> float | None:
    """Max |onnxruntime - PyTorch| on random inputs at a batch size other than the export's; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    inputs = example_inputs(pipe, batch, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {name: x.cpu().numpy() for name, x in zip(input_names(pipe), inputs)})
    with torch.no_grad():
        expected = pipe.model(*inputs).cpu()
    return (torch.from_numpy(out) - expected).abs().max().item()


def export_pt2(pipe: Pipeline, path: Path) -> Path:
    program = torch.export.export(pipe.model, example_inputs(pipe), dynamic_shapes=_dynamic_batch(pipe))
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    return path


def check_pt2(pipe: Pipeline, path: Path, batch: int = 5) -> float:
    """Max |reloaded program - PyTorch| on random inputs."""
    inputs = example_inputs(pipe, batch, seed=1)
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return (reloaded(*inputs) - pipe.model(*inputs)).abs().max().item()
