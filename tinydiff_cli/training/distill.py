"""Distillation to a few sampling steps, the engine of `tinydiff distill`.

    distiller = Distiller(load_checkpoint("runs/unet-small"), DistillSettings(steps=2), "runs/unet-small-2step", "cpu")
    distiller.run()   # runs/unet-small-2step/last.json: a checkpoint that samples in 2 steps, w in its range

Stage 1, guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models", sec. 4.1, stage
one): a student that takes the guidance weight w as an input learns to give in one forward what its teacher gives with
classifier-free guidance in two, for w drawn uniformly from [w_min, w_max].
Then progressive distillation (Salimans & Ho 2022, Algorithm 2): a student for N DDIM steps learns to reach in one
step where its teacher gets in two; each stage halves N and its student becomes the next stage's teacher.

Choices for a CPU budget, and why:
- The students predict v (Salimans & Ho sec. 4). An eps-student cannot take one big step: its x_0 is
  (x_t - sigma eps) / alpha, which divides by alpha ~ 0.006 at t = T - 1 of the linear schedule. Stage 1 moves the
  teacher's parameterization to v as it moves w into the network.
- Each stage trains only at the timesteps its student will sample at (stage 1 at the first teacher's grid): nothing
  else is ever asked of it.
- The grids nest, DiscreteVP.timesteps(2N)[2i] == DiscreteVP.timesteps(N)[i] (both are round(T - i T / N) - 1), so a
  student step from grid point i to i + 1 is exactly two teacher steps.
- The loss is the MSE of v, i.e. the x_0 error weighted by SNR + 1 (Salimans & Ho sec. 4, "SNR+1" weighting).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import __version__
from ..io.checkpoint import Checkpoint, DataInfo, DistillInfo, TrainState, load_checkpoint, load_model, save_checkpoint
from ..config import DISCRETE_OBJECTIVES, Config, config_from_dict, config_to_dict
from ..data.load import load_dataset_of
from ..data.datasets import to_model_range
from .ema import EMA
from ..errors import TinydiffError
from ..diffusion.formulations import per_row
from ..diffusion.guidance import Denoiser, guided_denoiser
from ..io.images import save_grid
from .loop import Budget, Loop, LoopPlan, LRSchedule, stop_on_signals
from ..models import build_model
from ..sampling.pipeline import Pipeline, make_generator
from ..sampling.plan import plan_sampling
from .log import PrintReporter

STUDENT_OBJECTIVE = "v"


@dataclass(frozen=True)
class DistillSettings:
    """What `tinydiff distill` is asked for; stored in the checkpoint, so a resumed distillation keeps them."""

    steps: int = 2  # the final student's sampling steps
    teacher_steps: int = 8  # the DDIM grid that stage 1 distils and the first halving starts from
    w_min: float = 0.0
    w_max: float = 2.0
    max_minutes: float | None = 20.0  # for the whole distillation, split evenly over its stages
    stage_iterations: int = 2000  # optimizer steps per stage at most
    batch_size: int = 64
    lr: float = 5e-4  # peak; warm-up over 20 iterations and cosine decay within each stage
    ema_decay: float = 0.995
    p_uncond: float = 0.1  # the share of rows with the null label, so the student also samples unconditionally
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100

    def validate(self) -> "DistillSettings":
        if self.steps < 1:
            raise TinydiffError(f"--steps must be 1 or more (1, 2 and 4 are the usual), got {self.steps}")
        halvings = math.log2(self.teacher_steps / self.steps) if self.teacher_steps >= 1 else -1
        if halvings < 0 or halvings != int(halvings):
            raise TinydiffError(f"--teacher-steps ({self.teacher_steps}) must be --steps ({self.steps}) times a power "
                                f"of two, such as 8 for --steps 1, 2 or 4")
        if not 0 <= self.w_min <= self.w_max:
            raise TinydiffError(f"--w-max must be at least 0 (and w_min), got [{self.w_min}, {self.w_max}]")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TinydiffError(f"--max-minutes must be positive (0 on the command line: no time limit), got {self.max_minutes}")
        for name, value in (("--stage-iterations", self.stage_iterations), ("--batch-size", self.batch_size),
                            ("log_every", self.log_every), ("checkpoint_every", self.checkpoint_every)):
            if value < 1:
                raise TinydiffError(f"{name} must be at least 1, got {value}")
        return self


@dataclass(frozen=True)
class Stage:
    kind: str  # "guidance" (stage 1) or "halve"
    steps: int  # the student's sampling steps at the end of this stage

    def describe(self) -> str:
        if self.kind == "guidance":
            return f"guidance into the network, DDIM-{self.steps}"
        return f"halve DDIM-{2 * self.steps} -> DDIM-{self.steps}"


def plan_stages(settings: DistillSettings) -> list[Stage]:
    """Guidance distillation at teacher_steps, then one halving per factor of two down to steps."""
    stages, n = [Stage("guidance", settings.teacher_steps)], settings.teacher_steps
    while n > settings.steps:
        n //= 2
        stages.append(Stage("halve", n))
    return stages


# ---- the targets, as plain functions over tensors, in sigma (x = x_0 + sigma eps) ---------------------------
def ddim_step(x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) from sigma to sigma_next, one per row (B,):
    x_0 plus the direction to x rescaled, x_0 + (sigma_next / sigma) (x - x_0)."""
    ratio = per_row(sigma_next / sigma, x)
    return x0 + ratio * (x - x0)


def two_step_target(teacher: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_mid: torch.Tensor,
                    sigma_next: torch.Tensor) -> torch.Tensor:
    """Salimans & Ho 2022, Algorithm 2: two teacher DDIM steps sigma -> sigma_mid -> sigma_next, then the x_0 for
    which one DDIM step sigma -> sigma_next lands on the same point: with r = sigma_next / sigma,
        x~ = (x_next - r x) / (1 - r)
    (their eq. for x~ divided through by alpha_next). At sigma_next = 0 that is the teacher's final x_0 itself."""
    x_mid = ddim_step(teacher(x, sigma), x, sigma, sigma_mid)
    x_next = ddim_step(teacher(x_mid, sigma_mid), x_mid, sigma_mid, sigma_next)
    ratio = per_row(sigma_next / sigma, x)
    return (x_next - ratio * x) / (1 - ratio)


def student_from_teacher(teacher: torch.nn.Module, teacher_config: Config, data: DataInfo) -> tuple[torch.nn.Module, Config]:
    """The stage-1 student: the teacher's backbone with a guidance input, predicting v, starting from the teacher's
    weights. The new input's last layer is zero, so at first its network gives the teacher network's output for
    every w; for a v teacher that is the teacher's conditional model, but an eps or x0 teacher's output now reads
    as v, so stage 1 also learns the change of parameterization (its first loss is that of the wrong reading)."""
    cfg = config_from_dict(config_to_dict(teacher_config))
    cfg.model.guidance_input, cfg.diffusion.objective = True, STUDENT_OBJECTIVE
    student = build_model(cfg.model, data.image_size, data.channels, data.num_classes)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not key.startswith("guidance_emb.") for key in missing):
        raise TinydiffError("the teacher's weights do not fit its own backbone with a guidance input")
    return student.to(next(teacher.parameters()).device), cfg


# ---- the loop ------------------------------------------------------------------------------------------
@dataclass
class DistillResult:
    stage: int  # stages completed
    stop_reason: str
    checkpoint: Path
    loss: float | None
    elapsed_s: float


class Distiller:
    """Holds the data (in memory), the current stage's teacher, student, EMA copy and optimizer, and the RNG stream;
    `run` goes through the stages, saving `last` (resumable) as it goes and `stage<k>` at the end of each."""

    def __init__(self, teacher: Checkpoint, settings: DistillSettings, out_dir: str | Path, device, *,
                 data_dir: str | None = None, reporter=None):
        self.settings, self.out_dir, self.device = settings.validate(), Path(out_dir), torch.device(device)
        self.reporter = reporter or PrintReporter()
        self.teacher_checkpoint = teacher
        if teacher.config.diffusion.objective not in DISCRETE_OBJECTIVES:
            raise TinydiffError(f"tinydiff distill takes a teacher trained on a discrete schedule (objective eps, x0 or "
                                f"v); this one is '{teacher.config.diffusion.objective}', whose distillation is not "
                                f"built yet")
        if settings.teacher_steps > teacher.config.diffusion.timesteps:
            raise TinydiffError(f"--teacher-steps {settings.teacher_steps} exceeds the model's T = "
                                f"{teacher.config.diffusion.timesteps}")
        self.data = teacher.data
        self.data_dir = data_dir if data_dir is not None else teacher.config.data.data_dir
        self.images = load_dataset_of(teacher.config.data, self.data_dir, trained_on=teacher.data).train.to(self.device)
        self.stages = plan_stages(settings)
        self.stage_index, self.stage_elapsed = 0, [0.0] * len(self.stages)
        self.steps_before_stage = 0  # iterations of the stages before this one
        torch.manual_seed(settings.seed)  # dropout, in backbones that have it, draws from the global stream
        self.generator = make_generator(settings.seed, self.device)
        self.stop_requested = False
        self.previewing = False  # stop_on_signals asks; the stage's loop does its own skipping
        self.begin_stage(load_model(teacher, self.device, "ema"), teacher.config)

    # ---- stages --------------------------------------------------------------------------------------
    def begin_stage(self, teacher_model: torch.nn.Module, teacher_config: Config) -> None:
        """The stage's teacher (frozen), and its student starting from the teacher's weights."""
        if self.stage_index == 0:
            with torch.random.fork_rng(devices=[]):  # the new w layers' initial weights follow the seed alone
                torch.manual_seed(self.settings.seed)
                student, self.config = student_from_teacher(teacher_model, teacher_config, self.data)
        else:
            student, self.config = copy.deepcopy(teacher_model), teacher_config
        self.teacher = Pipeline.from_model(teacher_model.eval().requires_grad_(False), teacher_config, self.data)
        self.teacher_max_sigma = self.teacher.plan().max_sigma  # the teacher's guidance interval, learned too
        self.student = student.train().requires_grad_(True)
        self.ema = EMA(self.student, self.settings.ema_decay, warmup=10)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=self.settings.lr, weight_decay=0.0)
        s, budget_s = self.settings, self.stage_budget_s()
        # the LR warms up and decays within each stage, so each stage's student settles before it becomes the next
        # stage's teacher; a stage ends after its iterations or its share of the time, whichever runs out first
        budget = Budget(s.stage_iterations, budget_s, steps_used=f"{s.stage_iterations} iterations",
                        time_used="" if budget_s is None else
                        f"its share of the time ({budget_s / 60:.1f} of {s.max_minutes:g} min)")
        plan = LoopPlan(LRSchedule(s.lr, warmup_steps=20), budget, s.batch_size, grad_clip=1.0,
                        log_every=s.log_every, lr_name="--lr")
        self.loop = Loop(self.student, lambda step: self.loss(*self.batch()), self.optimizer, self.ema, plan,
                         reporter=self.reporter)
        if self.stop_requested:
            self.loop.request_stop()
        self.pipeline = Pipeline.from_model(self.ema.ema_model, self.config, self.data)  # the student, for samples
        stage, form = self.stages[self.stage_index], self.teacher.formulation
        self.grid = form.sigmas(stage.steps).to(self.device)  # ending at 0: the clean image
        if stage.kind == "halve":  # the teacher's grid, twice as fine (the guidance stage has no teacher steps)
            self.teacher_grid = form.sigmas(2 * stage.steps).to(self.device)

    @property
    def state(self) -> TrainState:
        """What a resume restores (student, EMA, optimizer moments, RNG streams), in the checkpoint format of training."""
        return TrainState(self.student, self.ema.ema_model, self.optimizer, self.generator)

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    def stage_budget_s(self) -> float | None:
        m = self.settings.max_minutes
        return None if m is None else 60 * m / len(self.stages)

    # ---- one step ------------------------------------------------------------------------------------
    def batch(self):
        """Training images with noise at the stage's grid points, labels (some dropped to the null class), w."""
        s, g, n = self.settings, self.generator, self.settings.batch_size
        idx = torch.randint(0, len(self.images), (n,), device=self.device, generator=g)
        x0, labels = to_model_range(self.images.images[idx]), self.images.labels[idx]
        drop = torch.rand(n, device=self.device, generator=g) < s.p_uncond
        labels = torch.where(drop, torch.full_like(labels, self.data.num_classes), labels)
        i = torch.randint(0, self.stage.steps, (n,), device=self.device, generator=g)
        sigma = self.grid[i]
        x = x0 + per_row(sigma, x0) * torch.randn(x0.shape, device=self.device, generator=g)
        w = s.w_min + (s.w_max - s.w_min) * torch.rand(n, device=self.device, generator=g)
        return x, sigma, i, labels, w

    def loss(self, x, sigma, i, labels, w) -> torch.Tensor:
        """MSE between the student's output (v) and the output whose x_0 is the stage's target x_0."""
        student = self.pipeline.formulation
        with torch.no_grad():
            teacher = guided_denoiser(self.teacher.model, self.teacher.formulation, labels,
                                      null_class=self.data.num_classes, w=w, max_sigma=self.teacher_max_sigma)
            if self.stage.kind == "guidance":
                x0_target = teacher(x, sigma)
            else:
                x0_target = two_step_target(teacher, x, sigma, self.teacher_grid[2 * i + 1], self.grid[i + 1])
            s = per_row(sigma, x)
            target = student.output_for(x, s, x0_target)
        output = self.student(student.c_in(s) * x, student.c_noise(sigma), labels, w)
        return F.mse_loss(output, target)

    # ---- what the stage's loop holds ----------------------------------------------------------------
    @property
    def stage_step(self) -> int:
        return self.loop.step

    @property
    def total_step(self) -> int:
        """Iterations over all stages: the checkpoints' step."""
        return self.steps_before_stage + self.loop.step

    @property
    def last_loss(self) -> float | None:
        return self.loop.last_loss

    def train_step(self, lr: float) -> torch.Tensor:
        return self.loop.train_step(lr)

    def request_stop(self) -> None:
        """Stop after the current iteration and save `last` (what Ctrl-C does)."""
        self.stop_requested = True
        self.loop.request_stop()

    # ---- the run -------------------------------------------------------------------------------------
    def run(self) -> DistillResult:
        s = self.settings
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start_stage = self.stage_index
        with stop_on_signals(self):
            while self.stage_index < len(self.stages):
                k, stage, loop = self.stage_index, self.stage, self.loop
                self.reporter.log(f"stage {k + 1}/{len(self.stages)}: {stage.describe()}")
                self.reporter.start(s.stage_iterations, self.stage_step, description=f"stage {k + 1}")
                loop.elapsed_before = self.stage_elapsed[k]
                reason = loop.run(self.between_steps)
                self.stage_elapsed[k] = loop.elapsed()
                self.reporter.finish()
                if reason == "interrupted":
                    self.save("last")
                    return DistillResult(k, reason, self.out_dir / "last.json", self.last_loss, sum(self.stage_elapsed))
                self.finish_stage(reason)
        if self.stage_index == start_stage == len(self.stages):
            self.reporter.log("nothing to distil: every stage is done")
        return DistillResult(len(self.stages), "done", self.out_dir / "last.json", self.last_loss, sum(self.stage_elapsed))

    def between_steps(self, loop: Loop, metrics: dict | None) -> None:
        if self.stage_step % self.settings.checkpoint_every == 0:
            self.stage_elapsed[self.stage_index] = loop.elapsed()
            self.save("last")

    def finish_stage(self, reason: str) -> None:
        """Keep the stage's student (EMA) as stage<k>, preview it, and make it the next stage's teacher."""
        k, stage = self.stage_index, self.stage
        self.save(f"stage{k + 1}", final=True)
        preview = self.preview(self.out_dir / "samples" / f"stage{k + 1}_ddim{stage.steps}.png")
        self.reporter.log(f"stage {k + 1} done after {self.stage_step} iterations ({reason}), loss "
                          f"{self.last_loss if self.last_loss is None else round(self.last_loss, 5)}; samples {preview}")
        self.stage_index, done, last_loss = k + 1, self.total_step, self.last_loss
        if self.stage_index < len(self.stages):
            self.begin_stage(copy.deepcopy(self.ema.ema_model), self.config)
            self.steps_before_stage, self.loop.last_loss = done, last_loss  # `last` reports it until the stage logs
        self.save("last")

    def preview(self, path: Path) -> Path:
        """The student as `tinydiff sample` will draw it once saved: its stage's plan, at its own w."""
        plan = plan_sampling(self.pipeline.formulation, self.config, self.distill_info(self.stage.steps))
        labels = self.pipeline.labels("all", 4 * self.pipeline.grid_columns)
        images = self.pipeline.sample(labels, plan, seed=self.settings.seed)
        return save_grid(images, path, ncols=self.pipeline.grid_columns)

    def distill_info(self, steps: int) -> DistillInfo:
        """What a student of `steps` DDIM steps was distilled for (the checkpoint's "distilled" entry)."""
        return DistillInfo("ddim", steps, self.settings.w_min, self.settings.w_max,
                           str(self.teacher_checkpoint.json_path.resolve()))

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save(self, name: str, final: bool = False) -> Path:
        """`last`: the resumable state (student, EMA, optimizer, RNG). `stage<k>` (final): the stage's student alone.
        Both load as a distilled model that samples with the steps of the stage they come from."""
        resumable = not final and self.stage_index < len(self.stages)
        progress = {"stage": self.stage_index, "stage_step": self.stage_step, "total_step": self.total_step,
                    "lr_decay_start": self.loop.lr_decay_start,
                    "stage_elapsed_s": self.stage_elapsed, "complete": self.stage_index == len(self.stages),
                    "resumable": resumable, "settings": dataclasses.asdict(self.settings), "data_dir": self.data_dir,
                    "stages": [dataclasses.asdict(st) for st in self.stages]}
        steps = self.stages[min(self.stage_index, len(self.stages) - 1)].steps
        distilled = self.distill_info(steps)
        tensors = (self.state.tensors() if resumable
                   else {f"ema.{k}": v for k, v in self.ema.ema_model.state_dict().items()})
        extra = {"tinydiff_version": __version__, "elapsed_s": sum(self.stage_elapsed), "data": self.data.to_meta(),
                 "train_loss": self.last_loss, "distilled": distilled.to_meta(), "distill": progress}
        return save_checkpoint(self.out_dir, name, config=self.config, step=self.total_step, tensors=tensors, extra=extra)

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue an interrupted distillation from its `last`: the stage, its teacher (the previous stage's
        student), the student, EMA, optimizer and RNG stream."""
        progress = ckpt.meta["distill"]
        if ckpt.meta.get("recovered_from_tensors"):
            raise TinydiffError(f"{ckpt.json_path} is older than its tensors (the run stopped while saving), so the stage "
                                f"they belong to is unknown; start the distillation again with a new --out")
        self.stage_index, stage_step = int(progress["stage"]), int(progress["stage_step"])
        self.steps_before_stage = int(progress.get("total_step", ckpt.step)) - stage_step
        self.stage_elapsed = [float(x) for x in progress["stage_elapsed_s"]]
        if self.stage_index < len(self.stages):
            if self.stage_index > 0:
                previous = load_checkpoint(ckpt.json_path.parent / f"stage{self.stage_index}.json")
                self.begin_stage(load_model(previous, self.device, "ema"), previous.config)
            self.state.restore(ckpt)
        # distillations before 0.4 do not record where the decay began: at the end of warm-up, by iterations
        warm = self.loop.schedule.warmup_steps
        self.loop.step, self.loop.last_loss = stage_step, ckpt.meta.get("train_loss")
        self.loop.lr_decay_start = progress.get("lr_decay_start",
                                                warm / self.settings.stage_iterations if stage_step > warm else None)


def settings_of(ckpt: Checkpoint) -> DistillSettings:
    """The settings a distillation was started with (from its `last`)."""
    return DistillSettings(**ckpt.meta["distill"]["settings"])
