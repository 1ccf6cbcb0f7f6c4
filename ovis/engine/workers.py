"""Process pools of the stages (GGN's grouping and inference, training stages under ``launch.workers``): one
BLAS/OpenMP thread per spawned worker, this process's torch threads while they run, and a clear error when a
worker dies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import torch

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """BLAS/OpenMP pools of 1 thread in processes started inside the block (several threads per
    grouping process make ARPACK several times slower on a busy machine)."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def explain_broken_pool(what: str, remedy: str) -> Iterator[None]:
    """A pool's worker dying inside the block raises a RuntimeError that says ``what`` died, names the two
    usual causes and ends with ``remedy`` (the setting to lower)."""
    try:
        yield
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"{what}. Worker processes are spawned: a script calling ovis's stage functions must keep its "
            f"top-level code under `if __name__ == '__main__':`. Otherwise it ran out of memory; {remedy}"
        ) from e


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """This process's torch CPU threads set to ``n`` inside the block: with the cores busy grouping, more
    threads than free cores make OpenMP spin and slow the affinity inference several-fold."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
