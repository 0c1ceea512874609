"""Where a computation runs: the device a `device: auto|cpu|cuda` param names, its precision, and DDP.

Distributed runs are launched by torchrun, which tells each process its rank through environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `init_distributed` reads that
launcher protocol and nothing else. The same code runs on CPU (gloo) and CUDA (nccl).
This module does not train or decide batch sizes (atarirep.pretraining).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from atarirep.plumbing.errors import UserError

ModuleT = TypeVar("ModuleT", bound=nn.Module)

DEVICES = ("auto", "cpu", "cuda")


def resolve(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a GPU is a UserError."""
    if device not in DEVICES:
        raise UserError(f"device {device!r} is unknown; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; set device: auto or cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly one-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group if launched by torchrun (else a one-process run).

    On CUDA each process takes GPU LOCAL_RANK. Returns the run's place and the device to use.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    place = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return place, device


def wrap(model: nn.Module, place: Distributed, device: torch.device) -> nn.Module:
    """`model` itself in a one-process run, else DistributedDataParallel (gradients averaged over ranks)."""
    if not place.is_distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, where: str) -> None:
    """UserError (one line) unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise UserError(
            f"{where}={precision!r} is not offered; use one of {', '.join(PRECISIONS)} (bf16: autocast on CUDA)"
        )


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `precision` is bf16; otherwise, and always on CPU, full float32."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on both: tensor-core convs on CUDA; on CPU oneDNN's channels-last convs (with the
    plain first conv, see encoders.SpaceToDepthConv2d) beat NCHW with space-to-depth (bench/bench_pretrain.py)."""
    del device  # one answer today; kept as a function of the device, where the choice belongs
    return torch.channels_last


def place(module: ModuleT, device: torch.device | None = None, layout: torch.memory_format | None = None) -> ModuleT:
    """`module` moved to `device` (where given) in `layout` (default: `memory_format(device)`), in place."""
    layout = memory_format(device or torch.device("cpu")) if layout is None else layout
    # torch's stubs of Module.to lack the memory_format keyword that it takes
    where = () if device is None else (device,)
    return module.to(*where, memory_format=layout)  # type: ignore[call-overload]


def free_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device (0 on CPU: nothing is moved there)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def all_mean(value: float, place: Distributed, device: torch.device) -> float:
    """The mean of `value` over all ranks (itself in a one-process run)."""
    if not place.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / place.world_size
