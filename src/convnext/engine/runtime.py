"""Where this process runs: one CPU, one GPU, or one of many processes under ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class Runtime:
    """Where this process runs: its device, its rank among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_agree(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every process: lets all ranks stop together when one of them must."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def check_device(name: str) -> torch.device:
    """``name`` as a device a run can use: cpu, or cuda[:N] with N below this machine's CUDA device count; one
    line otherwise (meta, mps, xla and cpu:N parse, but nothing here runs on them)."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"invalid --device {name!r}: {err}") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise UserError(f"--device {name}: runs use cpu or cuda[:N] (the CPU is one device: no index)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    dev = check_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(dev, rank, dist.get_world_size() if dist.is_initialized() else 1, local_rank, owns_group)


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device has it, fp16 (with loss scaling) on older GPUs, None without ``amp``."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def capped_workers(requested: int) -> tuple[int, str | None]:
    """``requested`` DataLoader workers, no more than this process's share of the CPU cores it may run on (the
    cores over torchrun's processes on this machine), and the line that says so when they were lowered."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(requested, max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if workers >= requested:
        return requested, None
    return workers, f"DataLoader workers {requested} -> {workers}: no more than this process's CPU cores"


def cap_workers(config) -> str | None:
    """Lower ``config.workers`` as `capped_workers` does; returns its line, for the caller to say once the
    run's data is known to be there, or None."""
    config.workers, note = capped_workers(config.workers)
    return note
