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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from .device import pick_device
from ..errors import TinydiffError

# How long a rank waits for the others in one collective before the job ends with an error: long enough for rank 0's
# evals and sample grids (the others wait for it in the next step's all-reduce; the first FID eval on a CPU trains
# the classifier), short enough that a hung rank does not hold the rest for DDP's default 30 minutes. A rank that
# dies is noticed at once (its connections close) and torchrun ends the job. TINYDIFF_DIST_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 900


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

    @property
    def train_command(self) -> str:
        """How this job is started again, for the `--resume` advice in messages."""
        return f"torchrun --nproc_per_node {self.world_size} -m tinydiff_cli train" if self.enabled else "tinydiff train"

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


def agree(d: Dist, rank_stops: bool, interrupted: bool, lr: float, device: torch.device) -> tuple[bool, bool, float]:
    """One all-reduce of three numbers -> (stop, interrupted anywhere, learning rate). Every rank stops when one was
    interrupted (a signal) or rank 0 says so (the step limit, or its clock under a time budget: only rank 0's clock
    counts, so ranks whose clocks differ cannot disagree); all take rank 0's learning rate (it follows that clock)."""
    if not d.enabled:
        return rank_stops, interrupted, lr
    import torch.distributed as tdist

    flags = torch.tensor([1.0 if interrupted else 0.0, 1.0 if (rank_stops and d.is_main) else 0.0,
                          lr if d.is_main else 0.0], dtype=torch.float64, device=device)
    tdist.all_reduce(flags)
    return bool(flags[0] > 0 or flags[1] > 0), bool(flags[0] > 0), float(flags[2])


@contextmanager
def first_on_each_machine(d: Dist):
    """The block runs on local rank 0 first, then on the machine's other ranks (a download must happen once)."""
    if not d.enabled:
        yield
        return
    import torch.distributed as tdist

    if d.local_rank != 0:
        tdist.barrier()
    yield
    if d.local_rank == 0:
        tdist.barrier()


def reseed_other_ranks(d: Dist, seed: int, step: int) -> None:
    """Rank 0 keeps the single-process stream of torch's global RNG (model dropout); the others get their own, so
    their dropout masks differ from rank 0's rather than repeating them row for row."""
    if d.enabled and d.rank > 0:
        torch.manual_seed(seed + 1_000_003 * d.rank + step)


def is_collective_failure(error: BaseException) -> bool:
    """A collective that failed because another rank died, hung or closed its connection (gloo and NCCL say so in
    their messages; newer torch raises DistError subclasses)."""
    import torch.distributed as tdist

    if isinstance(error, getattr(tdist, "DistError", ())):
        return True
    text = str(error)
    return any(word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out",
                                         "Timed out", "ProcessGroup"))


def mean_over_ranks(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (the logged loss is the global batch's, not rank 0's share)."""
    if not d.enabled:
        return value
    import torch.distributed as tdist

    value = value.detach().clone()
    tdist.all_reduce(value)
    return value / d.world_size
