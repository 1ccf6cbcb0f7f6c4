"""One distributed-init helper for every path: notebook / ``ovis train`` (one process), torchrun, Slurm.

Like torchvision references' ``init_distributed_mode``: torchrun's environment first
(RANK / WORLD_SIZE / LOCAL_RANK), Slurm's second (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, the
rendezvous address from submitit's job environment or ``scontrol show hostnames``), else one process.
The process group uses the ``env://`` method: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` gets the local rank."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def _slurm_master_addr() -> str:
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        import submitit

        return submitit.JobEnvironment().hostnames[0]
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise RuntimeError("Slurm job with several tasks but no SLURM_JOB_NODELIST; set MASTER_ADDR to the first node")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"cannot resolve the first node of {nodelist!r} with scontrol ({e}); set MASTER_ADDR") from None
    return out.stdout.split()[0]


def _env_from_slurm() -> tuple[int, int, int] | None:
    if "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return None
    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    local = int(os.environ.get("SLURM_LOCALID", "0"))
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
        # a port fixed by the job id: every task (and a requeued job) agrees without talking
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return rank, world, local


def init_distributed(device: str | torch.device = "auto", timeout_s: int = 1800) -> DistInfo:
    """Initialise (once) the default process group when launched with several processes.

    Safe to call repeatedly: an existing group is reused. With one process nothing is initialised.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_world_size() > 1)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        rank, world, local = _env_from_slurm() or (0, 1, 0)
    dev = resolve_device(device, local)
    if world == 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend="nccl" if dev.type == "cuda" else "gloo",
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=dev if dev.type == "cuda" else None,  # None is init_process_group's default
    )
    return DistInfo(rank, world, local, dev, True)


def destroy_distributed() -> None:
    """Tear down the default process group if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a copy; ``t`` itself unchanged)."""
    t = t.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return t
