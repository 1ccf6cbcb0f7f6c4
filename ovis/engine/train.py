"""One training loop for every model: teacher, student, grounding, affinity network.

A method provides a :class:`TrainTask` (model, dataset, its ``TrainConfig``, optional hooks); the
loop does the rest, the same way on CPU, one GPU, torchrun or Slurm:

* iteration-based (``max_iter``) over an infinite, seeded sampler split across ranks like
  ``DistributedSampler``; batches grouped by aspect ratio when the task gives ratios;
* SGD with momentum, bias lr factor / bias weight decay, linear warm-up × multistep (schedule.py);
* AMP (bf16 / fp16 with a GradScaler) on CUDA, gradient clipping, DDP when world size > 1;
* parameters frozen by name prefix (``cfg.freeze``), weights initialised from ``cfg.init``;
* ``last.pth`` (model, optimizer, scheduler, scaler, every rank's RNG, iteration) every
  ``checkpoint_period`` and at the end, picked up automatically on the next run; ``model_final.pth``
  (weights, iteration, recipe hash); ``metrics.jsonl`` one line per ``log_period``; all written
  atomically by rank 0; ``last.pth`` is copied on the training thread and written (fsynced) on a
  background thread while training goes on;
* a non-finite loss stops the run with :class:`TrainingDiverged` before anything is overwritten.

The model follows torchvision's detection API: in train mode ``model(images, targets)`` returns a
dict of scalar losses, summed for backward. The dataset's items go through ``collate_fn``
(default: ``(list of images, list of targets)``) and must collate to an ``(images, targets)`` pair.

The engine knows no method: :func:`run_stage` receives the task builder (and the recipe sections
its checkpoint depends on) from the layer above, whose registry names each method's tasks
(``ovis train`` resolves them there and calls :func:`main` with its resolver). Without a resolver the
command line needs ``--task``, whose module is imported before the recipe is read; a recipe's method
sections are known once its method's package (``ovis.methods.<name>``) is imported, by the task's module
or as the task itself::

    python -m ovis.engine.train --recipe demo_ggn --stage teacher --task ovis.methods.ggn:teacher_task
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import importlib.util
import json
import logging
import random
import resource
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ovis.config import Recipe, TrainConfig, load_recipe
from ovis.engine import dist as odist
from ovis.engine.schedule import build_lr_scheduler, build_optimizer
from ovis.io import atomic_path, remove_stale_temps, write_text_atomic
from ovis.locks import FolderInUse, folder_lock
from ovis.runs import RunLayout, default_run_dir, stage_hash

logger = logging.getLogger(__name__)

LAST, FINAL, METRICS = "last.pth", "model_final.pth", "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; ``last.pth`` still holds the last good checkpoint."""

    def __init__(self, iteration: int, losses: dict[str, float], checkpoint: Path, checkpoint_iter: int | None):
        self.iteration, self.losses = iteration, losses
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        kept = (f"the last good checkpoint {checkpoint} (iteration {checkpoint_iter}) is kept"
                if checkpoint_iter is not None else "no checkpoint had been written yet")
        super().__init__(
            f"training diverged at iteration {iteration}: non-finite loss ({terms}); {kept}. "
            "Lower train.lr, raise train.warmup_iters or set train.clip_grad_norm, then rerun to resume."
        )


class TaskError(ValueError):
    """The ``--task`` spec (or the method's default) cannot be turned into a TrainTask."""


@dataclass
class TrainTask:
    """What a method hands to the loop.

    ``after_step(iteration, model)`` runs after every optimizer step with the number of completed
    iterations (and once with the resume iteration before a resumed run's first step), on the
    unwrapped model; it must be idempotent (e.g. CPL freezes its σ-head once iteration ≥ N).
    Changing ``requires_grad`` under DDP needs ``find_unused_parameters: true``.
    ``param_groups`` replaces the default weight/bias groups (torch optimizer group dicts).
    ``aspect_ratios`` (width / height per dataset item) turns on aspect-ratio grouped batches.
    """

    model: nn.Module
    dataset: Dataset
    cfg: TrainConfig
    collate_fn: Callable[[list[Any]], Any] | None = None
    aspect_ratios: Sequence[float] | None = None
    after_step: Callable[[int, nn.Module], None] | None = None
    param_groups: list[dict[str, Any]] | None = None


# what a method hands the engine for a stage: (recipe, run dir, stage name) -> the stage's TrainTask
TaskBuilder = Callable[[Recipe, Path, str], TrainTask]


@dataclass(frozen=True)
class StageSpec:
    """How to train one stage, as the layer above the engine declares it.

    ``build`` makes the :class:`TrainTask`; ``sections`` are the recipe sections the stage's checkpoint
    depends on (its recipe hash; default: those of the pipeline stage named like it,
    :func:`ovis.runs.stage_sections`); ``config`` names the recipe section holding its ``TrainConfig``
    (default: the one named like the stage).
    """

    build: TaskBuilder
    sections: tuple[str, ...] | None = None
    config: str | None = None


@dataclass
class TrainResult:
    final: Path  # model_final.pth
    last: Path  # last.pth
    metrics: Path  # metrics.jsonl
    iteration: int  # completed iterations
    skipped: bool = False  # model_final.pth already matched the recipe hash


# --------------------------------------------------------------------------------------------
# sampling


class InfiniteSampler(Sampler[int]):
    """Dataset indices forever: epoch ``e`` is a permutation seeded by ``seed + e``, padded by
    wrapping to a multiple of ``world_size`` and strided by rank (``DistributedSampler`` semantics)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("the training dataset is empty")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle

    def __iter__(self) -> Iterator[int]:
        total = -(-self.size // self.world_size) * self.world_size
        epoch = 0
        while True:
            if self.shuffle:
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.size)
            order = order.repeat(-(-total // self.size))[:total]
            yield from order[self.rank :: self.world_size].tolist()
            epoch += 1


def aspect_ratio_groups(ratios: Sequence[float]) -> list[int]:
    """Group id per item: 0 for portrait (width / height < 1), 1 for landscape or square."""
    return (np.asarray(ratios, dtype=np.float64) >= 1.0).astype(int).tolist()


class BatchStream(Sampler[list[tuple[int, int]]]):
    """Infinite batches of ``(index, sample_seed)``, skipping the first ``start_iter`` batches.

    With ``group_ids`` a batch holds items of one group only (torchvision's GroupedBatchSampler
    on an endless stream). Each item's seed depends on (seed, rank, batch number, slot) only, so
    augmentations replay identically after a resume, whatever the number of workers.
    """

    def __init__(self, sampler: InfiniteSampler, batch_size: int, group_ids: Sequence[int] | None = None,
                 seed: int = 0, start_iter: int = 0):
        self.sampler, self.batch_size, self.group_ids = sampler, batch_size, group_ids
        self.seed, self.start_iter = seed, start_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        n = 0
        for idx in self.sampler:
            g = 0 if self.group_ids is None else self.group_ids[idx]
            buffers[g].append(idx)
            if len(buffers[g]) < self.batch_size:
                continue
            batch = buffers.pop(g)
            n += 1
            if n > self.start_iter:
                seeds = np.random.SeedSequence([self.seed, self.sampler.rank, n]).generate_state(len(batch))
                yield [(i, int(s)) for i, s in zip(batch, seeds)]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # CPU generators only; the caller's states come back afterwards (matters with num_workers=0)
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


class _SeededDataset(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with _seeded(seed):
            return self.dataset[index]


def _collate_pairs(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------
# model set-up


def _under(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def freeze(model: nn.Module, prefixes: Sequence[str]) -> tuple[int, int]:
    """Set ``requires_grad=False`` on parameters whose dotted name starts with a prefix
    (at a module boundary: ``backbone`` freezes ``backbone.body.conv1.weight``).

    Returns (frozen tensors, all tensors). A prefix matching nothing is an error (a typo would
    otherwise silently train everything).
    """
    named = list(model.named_parameters())
    unmatched = [p for p in prefixes if not any(_under(n, p) for n, _ in named)]
    if unmatched:
        tops = sorted({n.split(".")[0] for n, _ in named})
        raise ValueError(f"train.freeze: prefix(es) {unmatched} match no parameter; the model's top-level modules are {tops}")
    frozen = 0
    for name, p in named:
        if any(_under(name, pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen += 1
    return frozen, len(named)


def load_init(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load model weights from a checkpoint (``last.pth``/``model_final.pth`` or a bare state dict),
    non-strictly: returns the ``missing``, ``unexpected`` and ``shape_mismatch`` (skipped) keys."""
    if not path.is_file():
        raise FileNotFoundError(f"train.init: checkpoint {path} not found (relative paths resolve against the run dir)")
    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    mismatch = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in mismatch}
    if not set(state) & set(own):
        raise ValueError(f"train.init: no key of {path} matches the model (model keys look like {sorted(own)[:3]})")
    res = model.load_state_dict(state, strict=False)
    return {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys), "shape_mismatch": mismatch}


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    dtypes = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"train.amp={amp!r}: expected one of {sorted(dtypes)}")
    if dtypes[amp] is not None and device.type != "cuda":
        warnings.warn(f"train.amp={amp!r} is ignored on {device.type}: mixed precision runs on CUDA only", stacklevel=3)
        return None
    return dtypes[amp]


# --------------------------------------------------------------------------------------------
# checkpoints and metrics


def save_atomic(obj: Any, path: Path, before_rename: Callable[[], None] | None = None) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync it, rename it over ``path``, fsync the
    folder (:func:`ovis.io.atomic_path`): a crash at any moment leaves the old file or the new one, never
    a part of one. ``before_rename`` runs just before the rename (waiting for a file that must be
    complete first)."""
    with atomic_path(path, unique=False, sync_dir=True, before_rename=before_rename) as tmp:
        torch.save(obj, tmp)
    return path


def snapshot(state: Any) -> Any:
    """A copy of a nested state (dicts, lists, tuples) whose tensors are detached CPU copies: what the
    training thread hands to a background write while it goes on updating the originals in place."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        out = copy.copy(state)  # keeps the type and attributes (a module state dict's _metadata)
        for k, v in state.items():
            out[k] = snapshot(v)
        return out
    if type(state) in (list, tuple):
        return type(state)(snapshot(v) for v in state)
    return state


class CheckpointWriter:
    """Writes checkpoints with :func:`save_atomic` on a background thread, one at a time.

    ``submit`` first waits for the write in flight: checkpoints reach the disk in order, and training
    runs at most one period ahead of the last one begun. A failed write is raised on the calling
    thread by the next ``check``, ``submit`` or ``wait``.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict[str, Any], path: Path) -> None:
        """Write ``state`` to ``path`` in the background; nothing may change ``state`` afterwards (:func:`snapshot`)."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state, path), name=f"ovis-write-{path.name}")
        self._thread.start()

    def _write(self, state: dict[str, Any], path: Path) -> None:
        try:
            save_atomic(state, path)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by check()
            e.add_note(f"(while writing {path} in the background, iteration {state.get('iteration')})")
            self._error = e

    def check(self) -> None:
        """Raise the error of a failed background write, without waiting for one in flight."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file that cannot be read or is not one ovis wrote; the message names the file."""


def load_checkpoint(path: Path, mmap: bool = False, keys: Sequence[str] = (),
                    advice: str = "delete it to start over") -> dict[str, Any]:
    """A checkpoint written by :func:`train`, on CPU (``mmap``: tensors read lazily, for a look at its
    metadata); it must be a dict holding ``keys``. A CheckpointError names the file otherwise, with ``advice``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                              f"{advice}") from None
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
    if not isinstance(state, dict) or missing:
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else f"a dict without {missing}"
        raise CheckpointError(f"checkpoint {path} is {what}, not a checkpoint ovis wrote; {advice}")
    return state


def final_is_current(out_dir: Path, recipe_hash: str | None) -> bool:
    """True when ``out_dir/model_final.pth`` exists and was trained from a recipe with this hash."""
    final = Path(out_dir) / FINAL
    if recipe_hash is None or not final.is_file():
        return False
    return load_checkpoint(final, mmap=True).get("recipe_hash") == recipe_hash


def _rng_state(device: torch.device) -> dict[str, Any]:
    # the legacy tuple (numpy's stubs type the default call as the dict form)
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        # plain tensors/ints so the checkpoint loads with weights_only=True
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "random": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["random"])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines past ``iteration`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    write_text_atomic("".join(kept), path)


def _max_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _ensure_logging() -> None:
    # notebooks and scripts see the loop's INFO lines unless the caller configured logging
    pkg = logging.getLogger("ovis")
    if not logging.getLogger().handlers and not pkg.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------------
# the loop


def train(task: TrainTask, out_dir: str | Path, device: str = "auto", resume: bool = True,
          progress: bool = True, recipe_hash: str | None = None) -> TrainResult:
    """Train ``task.model`` for ``task.cfg.max_iter`` iterations, writing into ``out_dir``.

    With ``resume``, returns at once if ``model_final.pth`` was already trained from a recipe with
    ``recipe_hash``, else continues from ``out_dir/last.pth`` if present and written under the same
    ``recipe_hash`` (or none); without, or under another hash, starts over. Relative
    ``cfg.init`` paths resolve against ``out_dir.parent`` (the run dir). Every rank calls this;
    only rank 0 writes files, logs and shows the progress bar (stderr).
    """
    _ensure_logging()
    cfg = task.cfg
    out_dir = Path(out_dir)
    last, final, metrics_path = out_dir / LAST, out_dir / FINAL, out_dir / METRICS
    info = odist.init_distributed(device)
    dev = info.device

    def log(msg: str) -> None:
        if info.is_main:
            logger.info(msg)

    if resume and final_is_current(out_dir, recipe_hash):
        it = int(load_checkpoint(final, mmap=True).get("iteration", cfg.max_iter))
        log(f"{final} matches recipe hash {recipe_hash}: nothing to train")
        return TrainResult(final, last, metrics_path, it, skipped=True)
    amp_dtype = _amp_dtype(cfg.amp, dev)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for tmp in remove_stale_temps(out_dir):
            log(f"removed {tmp.name}, left by an interrupted checkpoint write")
    _seed_all(cfg.seed + info.rank)

    model = task.model.to(dev)
    if cfg.freeze:
        n_frozen, n_all = freeze(model, cfg.freeze)
        n_values = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log(f"froze {n_frozen} of {n_all} parameter tensors ({n_values:,} values) under {list(cfg.freeze)}")
    ckpt = load_checkpoint(last, keys=("model", "optimizer", "scheduler", "iteration")) if resume and last.is_file() else None
    if ckpt is not None and recipe_hash is not None and ckpt.get("recipe_hash") not in (None, recipe_hash):
        # what it trained on (data, pseudo masks, schedule) may differ: resuming would keep stale weights
        log(f"{last} was written under recipe hash {ckpt['recipe_hash']}, not {recipe_hash}: starting over")
        ckpt = None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {last} does not fit the model ({' '.join(str(e).split())[:200]}); delete it to start over"
                                  ) from None
    elif cfg.init:
        init = Path(cfg.init) if Path(cfg.init).is_absolute() else out_dir.parent / cfg.init
        report = load_init(model, init)
        log(f"initialised from {init}: " + "; ".join(f"{len(v)} {k}" + (f" {v[:5]}{'…' if len(v) > 5 else ''}" if v else "")
                                                     for k, v in report.items()))

    optimizer = build_optimizer(model, cfg, task.param_groups)
    scheduler = build_lr_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    start_iter, saved_iter = 0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter = saved_iter = int(ckpt["iteration"])
        rngs = ckpt["rng"]
        if len(rngs) == info.world_size:
            _set_rng_state(rngs[info.rank], dev)
        else:
            log(f"warning: {last} holds RNG states of {len(rngs)} ranks, now {info.world_size}: RNG reseeded")
        log(f"resumed from {last} at iteration {start_iter}")
        del ckpt
    if info.is_main:
        if start_iter == 0:
            metrics_path.unlink(missing_ok=True)
        else:
            _truncate_metrics(metrics_path, start_iter)
    if start_iter > cfg.max_iter:
        log(f"warning: {last} is at iteration {start_iter}, past max_iter={cfg.max_iter}")
    if start_iter > 0 and task.after_step is not None:
        task.after_step(start_iter, model)

    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                      find_unused_parameters=cfg.find_unused_parameters)
    groups = None
    n_items = len(cast(Sized, task.dataset))  # torch's Dataset does not declare __len__
    if task.aspect_ratios is not None:
        if len(task.aspect_ratios) != n_items:
            raise ValueError(f"task.aspect_ratios has {len(task.aspect_ratios)} entries for a dataset of {n_items} items")
        groups = aspect_ratio_groups(task.aspect_ratios)
    sampler = InfiniteSampler(n_items, cfg.seed, info.rank, info.world_size)
    loader = DataLoader(
        _SeededDataset(task.dataset),
        batch_sampler=BatchStream(sampler, cfg.batch_size, groups, cfg.seed, start_iter),
        collate_fn=task.collate_fn or _collate_pairs,
        num_workers=cfg.num_workers,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG out of loader start-up
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    images_per_iter = cfg.batch_size * info.world_size
    bar = tqdm(total=cfg.max_iter, initial=min(start_iter, cfg.max_iter), desc=out_dir.name, unit="it", file=sys.stderr,
               disable=not (progress and info.is_main), mininterval=0, dynamic_ncols=True)
    window: dict[str, float] = defaultdict(float)
    window_n, run_t0 = 0, time.perf_counter()
    net.train()
    data_iter = iter(loader) if start_iter < cfg.max_iter else iter(())  # no loader workers when done
    writer = CheckpointWriter()
    try:
        for it in range(start_iter, cfg.max_iter):
            writer.check()
            t0 = time.perf_counter()
            images, targets = _to_device(next(data_iter), dev)
            t_data = time.perf_counter() - t0
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss_dict = net(images, targets)
            total = sum(loss_dict.values())
            names = list(loss_dict)
            values = odist.all_reduce_mean(torch.stack([loss_dict[k].detach().float() for k in names] + [total.detach().float()])).cpu()
            if not torch.isfinite(values).all():
                raise TrainingDiverged(it + 1, dict(zip(names, values[:-1].tolist())), last, saved_iter)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration = it + 1
            if task.after_step is not None:
                task.after_step(iteration, model)

            for k, v in zip(names + ["total_loss"], values.tolist()):
                window[k] += v
            window["time_per_iter"] += time.perf_counter() - t0
            window["data_time"] += t_data
            window_n += 1
            if iteration % cfg.log_period == 0 or iteration == cfg.max_iter:
                row = {k: v / window_n for k, v in window.items()}
                row = {"iteration": iteration, **row, "lr": lr, "images_per_s": images_per_iter / row["time_per_iter"],
                       "max_mem_mb": _max_memory_mb(dev), "eta_s": row["time_per_iter"] * (cfg.max_iter - iteration),
                       "time": time.time()}
                if info.is_main:
                    with open(metrics_path, "a", buffering=1) as f:
                        f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['total_loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(iteration - bar.n)
                window.clear()
                window_n = 0
            if iteration % cfg.checkpoint_period == 0 or iteration == cfg.max_iter:
                rngs = odist.all_gather_object(_rng_state(dev))
                if info.is_main:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
                    # copied now, consistent with `iteration`, and written while training goes on (after
                    # the last step nothing changes: no copy)
                    writer.submit((state if iteration == cfg.max_iter else snapshot(state))
                                  | {"rng": rngs, "iteration": iteration, "world_size": info.world_size,
                                     "recipe_hash": recipe_hash, "cfg": dataclasses.asdict(cfg)}, last)
                saved_iter = iteration
        done = max(start_iter, cfg.max_iter)
        if info.is_main:
            # written while last.pth may still be in flight, renamed into place once last.pth is complete
            save_atomic({"model": model.state_dict(), "iteration": done, "recipe_hash": recipe_hash}, final,
                        before_rename=writer.wait)
    except BaseException as e:
        try:
            writer.wait()  # the checkpoint in flight still reaches the disk
        except Exception as write_error:  # noqa: BLE001 - reported with the error that stopped the run
            e.add_note(f"the background write of {last} failed too: {type(write_error).__name__}: {write_error}")
        raise
    finally:
        bar.close()
        del data_iter  # stops loader workers

    log(f"trained {done - start_iter} iterations in {time.perf_counter() - run_t0:.1f} s; wrote {final}")
    odist.barrier()
    return TrainResult(final, last, metrics_path, done)


# --------------------------------------------------------------------------------------------
# tasks and the command line


def load_task_builder(spec: str) -> TaskBuilder:
    """``package.module:function`` or ``path/to/file.py:function`` → the task builder."""
    module_name, _, fn_name = spec.rpartition(":")
    if not module_name or not fn_name:
        raise TaskError(f"--task {spec!r}: expected module:function, e.g. my_package.tasks:teacher_task")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise TaskError(f"--task {spec!r}: file {path} not found")
            mod_spec = importlib.util.spec_from_file_location(f"_ovis_task_{path.stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise TaskError(f"--task {spec!r}: {path} cannot be imported as a module")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise TaskError(f"--task {spec!r}: cannot import {module_name!r} ({e}); is the method implemented? "
                        "pass --task module:function to use another builder") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskError(f"--task {spec!r}: {module_name!r} has no function {fn_name!r}")
    return fn


def task_spec(build: TaskBuilder | str) -> str:
    """The ``module:function`` that :func:`load_task_builder` turns back into ``build`` (a process that
    starts afresh, a torchrun worker, imports the builder by name); a spec string is returned as is."""
    if isinstance(build, str):
        return build
    module, name = getattr(build, "__module__", None), getattr(build, "__qualname__", None)
    found = None
    if module and name and module != "__main__":
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(module), name, None)
    if found is not build:
        raise TaskError(f"task builder {build!r} cannot be imported by name in another process; "
                        "pass a module-level function or its 'module:function' / 'file.py:function' spec")
    return f"{module}:{name}"


def run_stage(recipe: Recipe, stage: str, run_dir: str | Path, task: TaskBuilder, device: str = "auto",
              resume: bool = True, progress: bool = True, sections: Sequence[str] | None = None,
              config: str | None = None) -> TrainResult:
    """Train one stage of a recipe into ``<run_dir>/<stage>/``: build the task with ``task`` (the
    builder the method declares, see :class:`StageSpec` for ``sections`` and ``config``), save the
    resolved recipe, run :func:`train`."""
    run_dir = Path(run_dir)
    out_dir = RunLayout(run_dir).folder(stage)
    recipe_hash = recipe.hash(tuple(sections)) if sections is not None else stage_hash(recipe, stage)
    section = config or stage
    cfg = getattr(recipe, section, None)
    if not isinstance(cfg, TrainConfig):
        raise TaskError(f"recipe {recipe.name}: no training section {section!r} for stage {stage!r}")
    info = odist.init_distributed(device)
    # one run at a time in a run dir (rank 0 stands for its job): a second fails here, having changed nothing
    with folder_lock(run_dir) if info.is_main else contextlib.nullcontext():
        if resume and final_is_current(out_dir, recipe_hash):  # before building the task, which may be costly
            _ensure_logging()
            if info.is_main:
                logger.info(f"{out_dir / FINAL} matches recipe hash {recipe_hash}: nothing to train")
            it = int(load_checkpoint(out_dir / FINAL, mmap=True).get("iteration", 0))
            return TrainResult(out_dir / FINAL, out_dir / LAST, out_dir / METRICS, it, skipped=True)
        if cfg.init and not (resume and (out_dir / LAST).is_file()):  # read before anything is written
            init = Path(cfg.init) if Path(cfg.init).is_absolute() else run_dir / cfg.init
            if not init.is_file():
                raise FileNotFoundError(f"train.init: checkpoint {init} not found (relative paths resolve against the run dir)")
            load_checkpoint(init, mmap=True)
        _seed_all(cfg.seed)  # the same initial weights in every process
        train_task = task(recipe, run_dir, stage)
        if not isinstance(train_task, TrainTask):
            name = getattr(task, "__qualname__", repr(task))
            raise TaskError(f"task builder {name} returned {type(train_task).__name__}, expected ovis.engine.train.TrainTask")
        if info.is_main:  # only once the task is built: a missing input leaves no stage folder behind
            recipe.save(out_dir)
        return train(train_task, out_dir, device=device, resume=resume, progress=progress, recipe_hash=recipe_hash)


# what the layer above the engine gives main(): (recipe, stage, --task spec or None) -> the stage's spec
Resolver = Callable[[Recipe, str, str | None], StageSpec]


def main(argv: list[str] | None = None, resolve: Resolver | None = None, stages: Sequence[str] | None = None,
         prog: str = "python -m ovis.engine.train") -> int:
    """The training command line. ``resolve`` turns the recipe, ``--stage`` and ``--task`` into a
    :class:`StageSpec` (the method layer's registry; without one ``--task`` is required and the stage
    hashes like the pipeline stage of its name); ``stages`` are the ``--stage`` choices."""
    parser = argparse.ArgumentParser(prog=prog, description="Train one stage of a recipe (also under torchrun / Slurm).")
    parser.add_argument("--recipe", required=True, help="packaged recipe name (demo_cpl) or path to a YAML file")
    parser.add_argument("--stage", required=True, choices=list(stages) if stages is not None else None)
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/<recipe name>); writes <run-dir>/<stage>/")
    parser.add_argument("--task", default=None, required=resolve is None,
                        help="module:function building the TrainTask" + (" (default: the method's)" if resolve else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. teacher.max_iter=100 (repeatable)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the recipe's launch.device)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if last.pth / model_final.pth exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if resolve is None:  # the task is imported first: its method's package declares the recipe's sections
            named = StageSpec(load_task_builder(args.task))
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
        spec = named if resolve is None else resolve(recipe, args.stage, args.task)
        run_stage(recipe, args.stage, run_dir, spec.build, device=args.device or recipe.launch.device,
                  resume=not args.no_resume, progress=not args.no_progress, sections=spec.sections, config=spec.config)
    except (ValueError, FileNotFoundError, FolderInUse) as e:  # recipe, task spec, missing inputs, a run dir in use
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    finally:
        odist.destroy_distributed()
    return 0


if __name__ == "__main__":
    # run inside the importable module, not __main__, so task builders' `TrainTask` is our class
    from ovis.engine.train import main as _main

    sys.exit(_main())
