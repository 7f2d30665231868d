"""The checkpoint format: tensors in safetensors, everything else in a JSON sidecar; nothing is pickled.

    run/last.safetensors   model.*, ema.*, optim.* tensors and RNG states (rng.*)  (see TrainState)
    run/last.json          config, step, elapsed time, optimizer hyper-parameters, data facts (see DataInfo)

`last` always points at the newest state; `ckpt_<step>` copies are kept every train.checkpoint_every steps.
Both files are written atomically, tensors first. The tensors' metadata repeats the step and elapsed time, so a
crash between the two writes leaves a loadable pair: the newer tensors win over the older JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import safe_open

from .atomic import write_safetensors, write_text_atomic  # noqa: F401  (write_safetensors: re-exported)
from ..config import Config, config_from_dict, config_to_dict, validate
from ..data.datasets import DataInfo  # noqa: F401  (re-exported: checkpoints record one)
from ..errors import TinydiffError

FORMAT = "tinydiff-checkpoint"
MODEL_FORMAT = "tinydiff-model"  # `tinydiff export`: EMA weights with config and data facts in the metadata
VERSION = 1


@dataclass(frozen=True)
class DistillInfo:
    """What a distilled student was distilled for (the "distilled" entry of the JSON, see training/distill.py): the sampler
    and number of steps it samples with, and the range of guidance weights it learned."""

    sampler: str
    steps: int
    w_min: float
    w_max: float
    teacher: str = ""

    @classmethod
    def from_meta(cls, meta: dict | None) -> "DistillInfo | None":
        if not meta:
            return None
        return cls(meta["sampler"], int(meta["steps"]), float(meta["w_min"]), float(meta["w_max"]),
                   meta.get("teacher", ""))

    def to_meta(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "w_min": self.w_min, "w_max": self.w_max,
                "teacher": self.teacher}


@dataclass
class Checkpoint:
    meta: dict
    tensors_path: Path
    json_path: Path

    @property
    def config(self) -> Config:
        return config_from_dict(self.meta["config"])

    @property
    def data(self) -> DataInfo:
        return DataInfo.from_meta(self.meta.get("data", {}), self.config.data.dataset)

    @property
    def distilled(self) -> DistillInfo | None:
        """Set for a student written by `tinydiff distill`: the sampler, steps and w range it takes."""
        return DistillInfo.from_meta(self.meta.get("distilled"))

    @property
    def is_training_checkpoint(self) -> bool:
        """False for an exported model, which holds the EMA weights only."""
        return self.meta.get("format") == FORMAT

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def tensors(self, prefix: str, device="cpu") -> dict[str, torch.Tensor]:
        """The tensors stored under `prefix.` (e.g. "ema"), with the prefix removed."""
        out = {}
        with _open_tensors(self.tensors_path, device) as f:
            for key in f.keys():
                if key.startswith(prefix + "."):
                    out[key[len(prefix) + 1:]] = f.get_tensor(key)
        return out


def _open_tensors(path: Path, device="cpu"):
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except Exception as e:  # safetensors raises its own error types, OSError, or ValueError for foreign files
        raise TinydiffError(f"{path} is not a readable safetensors file ({e}); re-run training or pick another checkpoint") from None


def save_checkpoint(run_dir: Path, name: str, *, config: Config, step: int, tensors: dict[str, torch.Tensor],
                    extra: dict) -> Path:
    """Write run_dir/name.safetensors and run_dir/name.json atomically; returns the JSON path."""
    run_dir = Path(run_dir)
    tensors_path, json_path = run_dir / f"{name}.safetensors", run_dir / f"{name}.json"
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    elapsed = str(extra.get("elapsed_s", 0.0))
    write_safetensors(tensors_path, contiguous, metadata={"format": FORMAT, "step": str(step), "elapsed_s": elapsed})
    meta = {"format": FORMAT, "version": VERSION, "step": step, "tensors": tensors_path.name,
            "config": config_to_dict(config), **extra}
    write_text_atomic(json_path, json.dumps(meta, indent=2))
    return json_path


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run folder, a .json sidecar or a .safetensors file -> the file to read (the sidecar for training
    checkpoints, the .safetensors itself for an exported model)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.json"
    elif path.suffix == ".safetensors" and path.with_suffix(".json").exists():
        path = path.with_suffix(".json")
    if not path.exists():
        raise TinydiffError(f"no checkpoint at {path}; train one with `tinydiff train` or pass --checkpoint PATH")
    return path


def _load_exported(path: Path) -> Checkpoint:
    with _open_tensors(path) as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != MODEL_FORMAT:
        raise TinydiffError(f"{path} is a safetensors file but not a tinydiff model (no '{MODEL_FORMAT}' metadata) "
                            f"and has no .json sidecar beside it")
    try:
        meta = {"format": MODEL_FORMAT, "step": int(metadata["step"]), "config": json.loads(metadata["config"]),
                "data": json.loads(metadata.get("data", "{}")), "distilled": json.loads(metadata.get("distilled", "null"))}
    except (KeyError, ValueError):
        raise TinydiffError(f"{path} has damaged tinydiff metadata; export it again") from None
    return Checkpoint(meta, path, path)


def _validated(ckpt: Checkpoint) -> Checkpoint:
    """Its config and data entry checked (types and ranges) before anything is built from them."""
    try:
        validate(ckpt.config, ckpt.data.image_size)
    except (TinydiffError, ValueError, TypeError) as e:
        raise TinydiffError(f"{ckpt.json_path} has an invalid config: {e}") from None
    return ckpt


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A training checkpoint (run folder, .json or its .safetensors) or an exported .safetensors model."""
    json_path = resolve_checkpoint_path(path)
    if json_path.suffix == ".safetensors":
        return _validated(_load_exported(json_path))
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TinydiffError(f"{json_path} is not a tinydiff checkpoint (not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TinydiffError(f"{json_path} is not a tinydiff checkpoint (no '{FORMAT}' format tag)")
    tensors_path = json_path.parent / meta.get("tensors", "")
    if not tensors_path.is_file():
        raise TinydiffError(f"{json_path} names {tensors_path.name}, which is missing; the run folder is incomplete")
    with _open_tensors(tensors_path) as f:
        stored = f.metadata() or {}
    if stored.get("format") != FORMAT or "step" not in stored:
        raise TinydiffError(f"{tensors_path} is not the tensor file of a tinydiff checkpoint")
    if stored["step"] != str(meta.get("step")):
        # The run died after replacing the tensors and before replacing the JSON: the tensors (weights, optimizer,
        # RNG streams) are the newer, complete state, and their metadata carries the step and elapsed time.
        meta = {**meta, "step": int(stored["step"]), "elapsed_s": float(stored.get("elapsed_s", meta.get("elapsed_s", 0.0))),
                "recovered_from_tensors": True}
    return _validated(Checkpoint(meta, tensors_path, json_path))


def find_latest_checkpoint(root: str | Path = "runs") -> Path:
    """The most recently written run/last.json under `root`."""
    candidates = sorted(Path(root).rglob("last.json"), key=lambda p: p.stat().st_mtime) if Path(root).is_dir() else []
    if not candidates:
        raise TinydiffError(f"no checkpoint found under {Path(root).resolve()}; train one with "
                            f"`tinydiff train --preset unet-small` or pass --checkpoint PATH")
    return candidates[-1]


def load_model(ckpt: Checkpoint, device="cpu", weights: str = "ema"):
    """Rebuild the backbone from the checkpoint's config and load its EMA ("ema") or training ("raw") weights,
    in eval mode."""
    from ..models import build_model, check_model_size

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    data = ckpt.data
    check_model_size(ckpt.config.model, data.image_size, data.channels, data.num_classes, source=str(ckpt.json_path))
    model = build_model(ckpt.config.model, image_size=data.image_size, in_channels=data.channels,
                        num_classes=data.num_classes)
    prefix = "ema" if weights == "ema" else "model"
    state = ckpt.tensors(prefix)
    if not state:
        raise TinydiffError(f"{ckpt.tensors_path} holds no {prefix} weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise TinydiffError(f"{ckpt.tensors_path} does not match its config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False)


@dataclass
class TrainState:
    """Everything a run carries across a restart besides the config: the weights, the EMA copy, the optimizer's
    moments and the RNG streams. `tensors` and `restore` map it to and from a checkpoint's tensors."""

    model: torch.nn.Module
    ema_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the run's stream for timesteps, noise and label dropout

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema_model.state_dict().items()})
        for index, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in state.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.train"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors

    def optimizer_settings(self) -> dict:
        """The optimizer's hyper-parameters, for the JSON (the moments travel as tensors)."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.state_dict()["param_groups"]]
        return {"type": type(self.optimizer).__name__, "param_groups": groups}

    def restore(self, ckpt: Checkpoint) -> None:
        """Load weights, EMA, optimizer moments and RNG streams. The optimizer's hyper-parameters stay those of the
        current config, so that --set train.weight_decay=... applies on resume."""
        try:
            self.model.load_state_dict(ckpt.tensors("model"))
            self.ema_model.load_state_dict(ckpt.tensors("ema"))
        except RuntimeError as e:
            raise TinydiffError(f"{ckpt.tensors_path} does not fit the model in the config ({str(e).splitlines()[0]})") from None
        state: dict[int, dict] = {}
        for key, value in ckpt.tensors("optim").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value.to(self.device) if name != "step" else value
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        rng = ckpt.tensors("rng")
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["train"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
