"""One config object: YAML preset -> dataclasses -> overrides -> `validate`, all in this module.

    cfg = load_config("unet-small", overrides=["train.lr=3e-4", "diffusion.objective=v"])

The resolved config is a plain dict (`config_to_dict`) inside every checkpoint's JSON sidecar.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import TinydiffError
from .diffusion.formulations import OBJECTIVES, DiscreteVP, Formulation, make_formulation
from .diffusion.schedules import SCHEDULES
from .models.config import BACKBONE_KEYS, DESIGN_SIZE, ModelConfig, adapt_to_image_size, model_checks


@dataclass
class DiffusionConfig:
    # the names of formulations.FORMULATIONS: eps, x0, v on the discrete schedule below; edm, flow (continuous)
    objective: Literal[OBJECTIVES] = "eps"
    schedule: Literal[SCHEDULES] = "linear"  # the names of schedules.make_betas (eps, x0, v only)
    timesteps: int = 1000  # T of the discrete schedule (eps, x0, v only)
    min_snr_gamma: float = 5.0  # 0 turns Min-SNR weighting off (for edm: its own weighting, for flow: plain MSE)
    p_uncond: float = 0.1  # label dropout for classifier-free guidance
    sigma_data: float = 0.5  # edm: the data's standard deviation in its preconditioning (Karras et al. Table 1)
    # the training noise-level distribution: edm's ln sigma ~ N(mean, std^2) (None: -1.2, 1.2), flow's logit t
    # ~ N(mean, std^2) (None: 0, 1)
    noise_mean: Optional[float] = None
    noise_std: Optional[float] = None

    def formulation(self) -> Formulation:
        """The formulation this section names (formulations.FORMULATIONS), on CPU."""
        return make_formulation(self.objective, schedule=self.schedule, timesteps=self.timesteps,
                                sigma_data=self.sigma_data, noise_mean=self.noise_mean, noise_std=self.noise_std)


DISCRETE_OBJECTIVES = DiscreteVP.TARGETS  # trained on the discrete schedule; edm and flow are continuous


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist, fashion-mnist, or a folder of images (see data/folders.py)
    data_dir: Optional[str] = None  # for mnist and fashion-mnist; None: $TINYDIFF_DATA, else ~/.cache/tinydiff/data
    image_size: Optional[int] = None  # None: the images' own size; else each image is resized once, at load
    channels: Optional[int] = None  # None: grey if the images are, else RGB; 1 or 3 converts


@dataclass
class TrainConfig:
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    warmup_steps: int = 200
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    epochs: int = 10
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    ema_decay: float = 0.999
    ema_warmup: int = 10
    seed: int = 0
    log_every: int = 20  # steps per loss window: a row of loss.csv and a progress update
    checkpoint_every: int = 1000  # steps between periodic checkpoints (besides `last`)
    eval_images: int = 2000  # test-split images for the per-epoch eval loss
    eval_every: int = 0  # steps between sample-quality evals (FID, class accuracy); 0 = off
    eval_samples: int = 500  # samples per sample-quality eval (FID is biased at small N: compare at equal N)
    sample_steps: int = 20  # DDIM steps for the per-epoch sample grid
    # The model's guidance weight: what its training grids use and what sample, eval, compare and the app default to.
    # The best w depends on the data and on how long the model trained (README, "Why these defaults").
    sample_w: float = 1.0
    # Guidance only at the steps with noise level sigma_t = sqrt((1 - alpha_bar) / alpha_bar) <= this (Kynkaanniemi
    # et al. 2024); None: at every step. Its default use is like sample_w's (README, "Why these defaults").
    sample_w_max_sigma: Optional[float] = None
    sample_rows: int = 4
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast; auto: bf16 on a GPU that has it, else fp32
    compile: bool = False  # torch.compile the model


@dataclass
class Config:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig}


def preset_dir() -> Path:
    """Presets ship inside the wheel as tinydiff_cli/presets; in a source checkout they sit at the top level."""
    packaged = Path(str(resources.files("tinydiff_cli") / "presets"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "presets"


def available_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def _check_value(where: str, value: Any, annotation) -> Any:
    """Return `value` if it fits `annotation` (ints are accepted as floats), else raise TinydiffError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _check_value(where, value, next(a for a in args if a is not type(None)))
    if origin is Literal:
        if value not in args:
            raise TinydiffError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise TinydiffError(f"{where} must be a list like [1, 2], got {value!r}")
        return [_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        raise TinydiffError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def _section_from_dict(name: str, cls, values: Any):
    if not isinstance(values, dict):
        raise TinydiffError(f"section '{name}' must be a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise TinydiffError(f"unknown setting '{name}.{key}'; known: {', '.join(sorted(known))}")
    return cls(**{k: _check_value(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def config_from_dict(values: dict) -> Config:
    if not isinstance(values, dict):
        raise TinydiffError("a config must be a mapping with sections model, diffusion, data, train")
    unknown = set(values) - set(SECTIONS) - {"preset"}
    if unknown:
        raise TinydiffError(f"unknown config section(s) {', '.join(sorted(unknown))}; known: preset, {', '.join(SECTIONS)}")
    sections = {name: _section_from_dict(name, cls, values.get(name) or {}) for name, cls in SECTIONS.items()}
    return Config(preset=str(values.get("preset", "custom")), **sections)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def used_settings(cfg: Config) -> dict:
    """config_to_dict without the other backbone's keys: what the printed config and config.yaml show. It reads back
    to the same Config (the left-out keys are unused defaults)."""
    values = config_to_dict(cfg)
    for backbone, keys in BACKBONE_KEYS.items():
        if backbone != cfg.model.type:
            for key in keys:
                values["model"].pop(key)
    return values


def read_preset(preset: str) -> dict:
    """A preset name (see `available_presets`) or a path to a YAML file -> its dict, with `preset` set."""
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = preset_dir() / f"{preset}.yaml"
        if not path.exists():
            raise TinydiffError(f"unknown preset '{preset}'; choose one of {', '.join(available_presets())} or give a path to a YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise TinydiffError(f"preset file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise TinydiffError(f"preset file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise TinydiffError(f"preset file {path} must hold a mapping of sections")
    values.setdefault("preset", path.stem)
    return values


def apply_settings(values: dict, settings: dict[str, Any]) -> dict:
    """Apply already-typed {"section.key": value} settings (the CLI's own flags); types are checked later."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        values.setdefault(section, {})[name] = value
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply "section.key=value" strings; values are parsed as YAML scalars/lists (3e-4, true, [1,2])."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise TinydiffError(f"override '{item}' must look like section.key=value, e.g. train.lr=3e-4")
        if section not in SECTIONS:
            raise TinydiffError(f"unknown config section '{section}' in '{item}'; known: {', '.join(SECTIONS)}")
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise TinydiffError(f"cannot parse the value in override '{item}'") from None
        # YAML 1.1 reads "3e-4" as a string; accept it as the float a user means
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        values.setdefault(section, {})[name] = parsed
    return values


def validate(cfg: Config, image_size: int | None = None) -> Config:
    """Range and consistency checks; every problem is one clear TinydiffError. The backbone is checked at
    `image_size`, or the size the config asks for (data.image_size), or 28 for MNIST and Fashion-MNIST; for an image
    folder of its own size that is known only once it is read (the trainer checks it then)."""
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    if cfg.data.image_size is not None and not 8 <= cfg.data.image_size <= 256:
        raise TinydiffError("data.image_size must be between 8 and 256")
    if image_size is None:
        image_size = cfg.data.image_size or (DESIGN_SIZE if cfg.data.dataset in ("mnist", "fashion-mnist") else None)
    if image_size is not None:
        m = adapt_to_image_size(m, image_size)[0]
    checks = (model_checks(m, image_size) if image_size is not None else []) + [
        (0 <= m.dropout < 1, "model.dropout must be in [0, 1)"),
        (d.timesteps >= 20 if d.schedule == "linear" else d.timesteps >= 2,
         "diffusion.timesteps must be at least 20 for the linear schedule (its betas scale with 1000/T) and 2 otherwise"),
        (d.timesteps <= 100_000, "diffusion.timesteps must be at most 100000"),
        (d.min_snr_gamma >= 0, "diffusion.min_snr_gamma must be >= 0 (0 turns it off)"),
        (0 <= d.p_uncond < 1, "diffusion.p_uncond must be in [0, 1)"),
        (d.sigma_data > 0, "diffusion.sigma_data must be positive"),
        (d.noise_std is None or d.noise_std > 0, "diffusion.noise_std must be positive, or null for the default"),
        (t.batch_size >= 1, "train.batch_size must be at least 1"),
        (0 < t.lr <= 1000, "train.lr must be positive and at most 1000"),
        (t.weight_decay >= 0 and t.grad_clip >= 0, "train.weight_decay and train.grad_clip must be >= 0"),
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.epochs >= 1, "train.epochs must be at least 1"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps must be at least 1"),
        (t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be positive"),
        (0 <= t.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (t.log_every >= 1 and t.checkpoint_every >= 1, "train.log_every and train.checkpoint_every must be at least 1"),
        (t.eval_images >= 0 and t.sample_rows >= 0, "train.eval_images and train.sample_rows must be >= 0"),
        (t.eval_every >= 0 and t.eval_samples >= 2, "train.eval_every must be >= 0 and train.eval_samples at least 2"),
        (t.sample_w >= 0, "train.sample_w, the model's guidance weight, must be >= 0"),
        (t.sample_w_max_sigma is None or t.sample_w_max_sigma > 0,
         "train.sample_w_max_sigma must be positive (guidance at sigma_t up to it), or null for every step"),
        (1 <= t.sample_steps <= (d.timesteps if d.objective in DISCRETE_OBJECTIVES else 10_000),
         f"train.sample_steps must be between 1 and diffusion.timesteps ({d.timesteps})"),
        (cfg.data.image_size is None or 8 <= cfg.data.image_size <= 256, "data.image_size must be between 8 and 256"),
        (cfg.data.channels in (None, 1, 3), "data.channels must be 1 (grey) or 3 (RGB)"),
    ]
    for ok, message in checks:
        if not ok:
            raise TinydiffError(message)
    return cfg


def load_config(preset: str | dict = "unet-small", overrides: list[str] | None = None) -> Config:
    """Preset name, YAML path or dict -> validated Config with `overrides` applied."""
    values = read_preset(preset) if isinstance(preset, str) else dict(preset)
    return validate(config_from_dict(apply_overrides(values, overrides or [])))
