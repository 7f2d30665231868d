"""`tinydiff export`: EMA weights as safetensors, ONNX or torch.export."""
from __future__ import annotations

from pathlib import Path

from ..errors import TinydiffError
from ..sampling.export import FORMATS, check_onnx, check_pt2, export_onnx, export_pt2, export_safetensors, input_names
from .ui import console, where
from .common import load_pipeline, open_checkpoint

SUFFIX = {"safetensors": ".safetensors", "onnx": ".onnx", "pt2": ".pt2"}


def run_export(*, checkpoint: Path | None, fmt: str, out: Path | None) -> Path:
    if fmt not in FORMATS:
        raise TinydiffError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    ckpt = open_checkpoint(checkpoint)
    out = out or Path(f"{ckpt.config.preset}-step{ckpt.step}{SUFFIX[fmt]}")
    if out.resolve() in (ckpt.json_path.resolve(), ckpt.tensors_path.resolve()):
        raise TinydiffError(f"--out {out} would overwrite the checkpoint it exports; choose another path")
    pipe = load_pipeline(ckpt, "cpu")
    if fmt == "safetensors":
        export_safetensors(pipe, out)
        console.print(f"EMA weights and config (step {ckpt.step}) -> {where(out)}; sample with: tinydiff sample --checkpoint {out}")
        return out
    objective = pipe.formulation.name
    if fmt == "onnx":
        export_onnx(pipe, out)
        error = check_onnx(pipe, out)
        check = ("onnxruntime not installed: not checked (pip install 'tinydiff[onnx]', or '.[onnx]' in a clone of the repository)" if error is None
                 else f"onnxruntime vs PyTorch on random inputs: max abs error {error:.2e}")
    else:
        export_pt2(pipe, out)
        check = f"torch.export.load vs PyTorch on random inputs: max abs error {check_pt2(pipe, out):.2e}"
    inputs = ", ".join(input_names(pipe))
    distilled = (f"; distilled for {pipe.distilled.sampler.upper()}-{pipe.distilled.steps} with w in "
                 f"[{pipe.distilled.w_min:g}, {pipe.distilled.w_max:g}]" if pipe.distilled else "")
    console.print(f"denoiser ({inputs}) -> {objective} prediction, dynamic batch{distilled} -> {where(out)}\n{check}")
    return out
