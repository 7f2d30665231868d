"""What diffusion does, as pictures: forward noising, schedule curves, the reverse process.

The functions return tensors or write files; `tinydiff visualize` and the app only choose arguments."""
from __future__ import annotations

from pathlib import Path

import torch

from ..io.figures import image_table, schedule_chart, trajectory_strip
from ..io.images import save_gif, trajectory_frames
from ..diffusion.formulations import q_sample
from .pipeline import Trajectory
from ..diffusion.schedules import SCHEDULES, Schedule, make_schedule

FORWARD_TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)


def forward_noising(x0: torch.Tensor, schedule: Schedule, timesteps, seed: int = 0) -> torch.Tensor:
    """x_t for every image (rows) at every timestep (columns), with one noise draw per image:
    float (N, 1, H, W) -> (len(timesteps), N, 1, H, W)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return torch.stack([q_sample(schedule, x0, torch.full((x0.shape[0],), t), noise) for t in timesteps])


def write_forward_figure(x0: torch.Tensor, schedule_name: str, timesteps, path: str | Path, seed: int = 0,
                         T: int = 1000) -> Path:
    schedule = make_schedule(schedule_name, T)
    noised = forward_noising(x0, schedule, timesteps, seed)
    columns = [(f"t={t}\n" + r"$\bar\alpha$" + f"={schedule.alpha_bar[t]:.3f}", noised[j]) for j, t in enumerate(timesteps)]
    return image_table(columns, path, title=f"forward process q(x_t | x_0), {schedule_name} schedule, T={schedule.T}")


def write_schedule_figure(path: str | Path, T: int = 1000) -> Path:
    return schedule_chart({name: make_schedule(name, T) for name in SCHEDULES}, path)


def pick_frames(num_steps: int, count: int) -> list[int]:
    """`count` step indices spread evenly over 0..num_steps-1, always including the last."""
    if num_steps <= count:
        return list(range(num_steps))
    return [round(i * (num_steps - 1) / (count - 1)) for i in range(count)]


def frames_with_result(traj: Trajectory, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each chosen step i: the x_t the model saw and the x_0 it predicted; then the final sample in both."""
    result = traj.x[-1:]
    return torch.cat([traj.x[steps], result]), torch.cat([traj.x0[steps], result])


def write_denoise_outputs(traj: Trajectory, gif_path: str | Path, strip_path: str | Path, title: str,
                          strip_frames: int = 10, gif_frames: int = 60, scale: int = 4) -> tuple[Path, Path, int]:
    """A GIF of x_t beside predicted x_0 over the steps and a PNG strip of `strip_frames` of them, each ending
    on the final sample. Returns the paths and the number of animation frames (before the held last frame)."""
    steps = traj.steps
    chosen = pick_frames(steps, strip_frames)
    x, x0 = frames_with_result(traj, chosen)
    trajectory_strip(x, x0, [traj.step_label(i) for i in chosen] + ["result"], strip_path, title)
    x, x0 = frames_with_result(traj, pick_frames(steps, gif_frames))
    save_gif(trajectory_frames(x, x0, scale), gif_path)
    return Path(gif_path), Path(strip_path), x.shape[0]
