"""Shipping a trained denoiser: EMA weights as safetensors (config in the metadata), ONNX, or torch.export.

Every exported denoiser has the same interface: (x_t float (B, C, H, W), t int64 (B,), labels int64 (B,))
-> the model's prediction (eps, x0 or v, as the config's diffusion.objective says), shaped like x_t. Each function
takes the Pipeline whose EMA model it ships.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import __version__
from .atomic import atomic_path
from .checkpoint import MODEL_FORMAT
from .errors import TinydiffError
from .pipeline import Pipeline

FORMATS = ("safetensors", "onnx", "pt2")


def example_inputs(pipe: Pipeline, batch: int = 2, seed: int = 0):
    """Random (x_t, t, labels) on the pipeline's device for its image shape, T and classes (the null class included)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *pipe.image_shape, generator=g)
    t = torch.randint(0, pipe.T, (batch,), generator=g)
    labels = torch.randint(0, pipe.num_classes + 1, (batch,), generator=g)
    return x.to(pipe.device), t.to(pipe.device), labels.to(pipe.device)


def export_safetensors(pipe: Pipeline, path: Path) -> Path:
    """The weights the pipeline samples with (EMA); the config and data facts ride in the file's metadata, so it is
    self-contained. Needs a pipeline loaded from a checkpoint."""
    ckpt = pipe.checkpoint
    weights = {f"ema.{k}": v.detach().contiguous().cpu() for k, v in pipe.model.state_dict().items()}
    metadata = {"format": MODEL_FORMAT, "step": str(ckpt.step), "tinydiff_version": __version__,
                "config": json.dumps(ckpt.meta["config"]), "data": json.dumps(ckpt.data.to_meta())}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=metadata)
    return path


def export_onnx(pipe: Pipeline, path: Path) -> Path:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise TinydiffError("ONNX export needs the onnx extra: pip install 'tinydiff[onnx]'")
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis naming are not actionable for users
        torch.onnx.export(pipe.model, example_inputs(pipe), str(tmp), input_names=["x_t", "t", "labels"],
                          output_names=["prediction"], dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={"x": {0: batch}, "t": {0: batch}, "labels": {0: batch}})
    return path


def check_onnx(pipe: Pipeline, path: Path, batch: int = 5) -> float | None:
    """Max |onnxruntime - PyTorch| on random inputs at a batch size other than the export's; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x, t, labels = example_inputs(pipe, batch, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x_t": x.cpu().numpy(), "t": t.cpu().numpy(), "labels": labels.cpu().numpy()})
    with torch.no_grad():
        expected = pipe.model(x, t, labels).cpu()
    return (torch.from_numpy(out) - expected).abs().max().item()


def export_pt2(pipe: Pipeline, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(pipe.model, example_inputs(pipe),
                                  dynamic_shapes={"x": {0: batch}, "t": {0: batch}, "labels": {0: batch}})
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    return path


def check_pt2(pipe: Pipeline, path: Path, batch: int = 5) -> float:
    """Max |reloaded program - PyTorch| on random inputs."""
    x, t, labels = example_inputs(pipe, batch, seed=1)
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return (reloaded(x, t, labels) - pipe.model(x, t, labels)).abs().max().item()
