"""Where a run executes: device choice and the torchrun (DDP) process group."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from common.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU when there is one, else the CPU; 'cuda' -> this rank's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: torch.device) -> None:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads of one core count once (from /proc/cpuinfo), within
    the CPU affinity (e.g. a cluster job's allocation)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: dict[int, tuple[str, str]] = {}
    try:
        processor, physical = None, "0"
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    physical = value
                elif key == "core id" and processor is not None:
                    cores[processor] = (physical, value)
    except (OSError, ValueError):
        return max(1, len(allowed))
    distinct = {cores[p] for p in allowed if p in cores}
    return max(1, len(distinct) if distinct else len(allowed))


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for PyTorch's operators (default: OMP_NUM_THREADS when set, else one per physical
    core); give the number set."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    torch.set_num_threads(threads)
    return threads
