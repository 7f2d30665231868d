"""Data-parallel training under torchrun: PyTorch's DDP, gloo on CPU and NCCL on CUDA.

    torchrun --nproc_per_node 2 -m tinydiff_cli train --preset unet-small

`train.batch_size` is the global batch. Every rank draws the same global batch (the one seeded data order) and the
same noise, timesteps and label dropout for it, and keeps its own rows (`Dist.rows`); DDP averages the gradients,
so N ranks take the step one process takes with the same global batch. Rank 0 alone writes and prints. Decisions
that must agree across ranks (stop now? which learning rate?) are taken by one small all-reduce per step (`agree`).
A single process started without torchrun never touches torch.distributed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .device import pick_device
from .errors import TinydiffError

# How long a rank waits for the others in one collective before the job ends with an error: long enough for rank 0's
# evals and sample grids (the others wait for it in the next step's all-reduce), short enough that a dead rank
# does not leave the rest hanging for DDP's default 30 minutes. TINYDIFF_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (which `check_batch` has made divisible)."""
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.world_size:
            raise TinydiffError(f"train.batch_size ({global_batch}) is the global batch and must divide evenly over "
                                f"the {self.world_size} processes; use a multiple of {self.world_size}")


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_flag: str = "auto") -> tuple[Dist, torch.device]:
    """(Dist, device) of this process: without torchrun, Dist() and the device the flag picks; under torchrun,
    the process group (NCCL on CUDA, each rank its own GPU; gloo on CPU) is initialised first."""
    if not launched_by_torchrun():
        return Dist(), pick_device(device_flag)
    import torch.distributed as tdist

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = pick_device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise TinydiffError("torchrun with --device mps is not supported (no MPS backend in torch.distributed); "
                            "use --device cpu")
    timeout = float(os.environ.get("TINYDIFF_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    return d, device


def close_distributed(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def agree(d: Dist, stop: bool, lr: float, device: torch.device) -> tuple[bool, float]:
    """One all-reduce of two numbers: stop if any rank must (a signal reached it, or rank 0's budget ran out), and
    use rank 0's learning rate (it follows rank 0's clock under a time budget)."""
    if not d.enabled:
        return stop, lr
    import torch.distributed as tdist

    flags = torch.tensor([1.0 if stop else 0.0, lr if d.is_main else 0.0], dtype=torch.float64, device=device)
    tdist.all_reduce(flags)
    return bool(flags[0] > 0), float(flags[1])


def mean_over_ranks(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (the logged loss is the global batch's, not rank 0's share)."""
    if not d.enabled:
        return value
    import torch.distributed as tdist

    value = value.detach().clone()
    tdist.all_reduce(value)
    return value / d.world_size
