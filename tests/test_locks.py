"""A folder lock outlives its owner while any process of the run lives: a child given the lock file (the
notebook kernel of `ovis reproduce`), a descendant that takes the folder itself (a torchrun worker);
and every spelling of an option that names a locked folder locks it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from ovis.cli import main as ovis
from ovis.locks import HELD_LOCKS_ENV, LOCK, FolderInUse, folder_lock

ROOT = Path(__file__).resolve().parents[1]
ANN = Path(__file__).parent / "data" / "real" / "coco_mini" / "annotations"

# takes the folder, starts a child that keeps running, prints the child's pid, waits to be killed
OWNER = """
import subprocess, sys, time
from ovis.locks import folder_lock, held_lock_fds
folder, how, joiner = sys.argv[1:4]
with folder_lock(folder):
    if how == "join":  # a descendant that takes the folder itself, started with every other file closed
        child = subprocess.Popen([sys.executable, "-c", joiner, folder], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "joined\\n"
    else:  # "pass_fds": started as the notebook kernel is; "none": given nothing
        fds = held_lock_fds() if how == "pass_fds" else ()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], pass_fds=fds)
    print(child.pid, flush=True)
    time.sleep(120)
"""
JOINER = """
import sys, time
from ovis.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("joined", flush=True)
    time.sleep(120)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != HELD_LOCKS_ENV}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _dead(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie holds no files either)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` (not a child of this process: orphaned) and wait until it has exited."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(pid), f"pid {pid} survived SIGKILL"


def _free(folder: Path) -> bool:
    """Lock ``folder`` and release it at once: False when it is in use."""
    try:
        _take(folder)
    except FolderInUse:
        return False
    return True


def _take(folder: Path) -> None:
    with folder_lock(folder):
        pass


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Pids to kill at the end, whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        _kill(pid)


@pytest.mark.parametrize("how", ["pass_fds", "join", "none"])
def test_the_lock_outlives_a_killed_owner_while_a_process_of_its_run_lives(how, tmp_path, orphans):
    folder = tmp_path / "run"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(folder), how, JOINER], stdout=subprocess.PIPE, text=True,
                             env=_env())
    orphans.append(owner.pid)
    child = int(owner.stdout.readline())
    orphans.append(child)
    with pytest.raises(FolderInUse, match=rf"in use by another ovis process \(pid {owner.pid}\)"):
        _take(folder)
    owner.send_signal(signal.SIGKILL)  # as a crash or an OOM kill would: no cleanup runs
    owner.wait()
    if how == "none":  # a child given no lock file holds nothing: the folder is free at once
        assert _free(folder) and not (folder / LOCK).exists()
        return
    with pytest.raises(FolderInUse, match=rf"started by pid {owner.pid}, which has exited; a process it started"):
        _take(folder)
    assert (folder / LOCK).read_text() == str(owner.pid)
    _kill(child)
    assert _free(folder)
    assert not (folder / LOCK).exists()


def test_a_descendant_of_a_killed_owner_cannot_join_a_folder_another_process_took(tmp_path):
    folder = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = _env(**{HELD_LOCKS_ENV: f"{int(gone.stdout)} {folder.resolve()}"})
    with folder_lock(folder):
        late = subprocess.run([sys.executable, "-c", JOINER, str(folder)], capture_output=True, text=True, env=stale,
                              timeout=60)
    assert late.returncode == 1 and "FolderInUse" in late.stderr and f"(pid {os.getpid()})" in late.stderr
    # no one holds the folder any more: the late descendant takes it as its own
    alone = subprocess.Popen([sys.executable, "-c", JOINER, str(folder)], stdout=subprocess.PIPE, text=True, env=stale)
    try:
        assert alone.stdout.readline() == "joined\n"
        with pytest.raises(FolderInUse, match=rf"\(pid {alone.pid}\)"):
            _take(folder)
    finally:
        alone.kill()
        alone.wait()
    assert _free(folder)


# the stage notebook of a fake splits stage: reports whether the kernel holds the lock file open, starts a
# worker that takes the run folder itself (as a torchrun worker does), then keeps running
KERNEL_CELL = """
import os, subprocess, sys, time
from pathlib import Path
lock = os.stat(Path(run_dir) / ".ovis.lock")
def holds(fd):
    try:
        return os.path.samestat(os.fstat(fd), lock)
    except OSError:
        return False
open_fds = [fd for fd in range(3, 1024) if holds(fd)]
worker = subprocess.Popen([sys.executable, "-c", JOINER, run_dir], stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline() == "joined\\n"
Path(run_dir, "pids.tmp").write_text(f"{os.getpid()} {worker.pid} {len(open_fds)}")
os.replace(Path(run_dir, "pids.tmp"), Path(run_dir, "pids"))
time.sleep(300)
"""


def test_a_killed_reproduce_keeps_its_run_folder_locked_while_its_kernel_or_worker_runs(tmp_path, orphans):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('recipe = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"JOINER = {JOINER!r}\n{KERNEL_CELL}")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbs / "00_splits.ipynb")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ovis.cli", "reproduce", "demo_cpl", "--stages", "splits",
                             "--run-dir", str(run)], cwd=tmp_path, env=_env(OVIS_NOTEBOOKS=str(nbs)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    orphans.append(proc.pid)
    deadline = time.monotonic() + 180
    while not (run / "pids").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not (run / "pids").is_file():
        proc.kill()
        pytest.fail(f"the stage kernel never started its worker: {proc.communicate()[1][-2000:]}")
    kernel, worker, kernel_fds = map(int, (run / "pids").read_text().split())
    orphans += [kernel, worker]
    assert kernel_fds == 1  # the kernel holds the lock file that `ovis reproduce` locked
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(FolderInUse, match=rf"started by pid {proc.pid}, which has exited"):
        _take(run)
    _kill(kernel)  # the orphaned kernel goes (ipykernel notices its parent is gone); its worker still runs
    with pytest.raises(FolderInUse):
        _take(run)
    _kill(worker)
    deadline = time.monotonic() + 15  # once seen under full load: the folder still held just after the kill
    while not _free(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _free(run)


def refused_while_locked(args: list[str], folder: Path, capsys) -> str:
    """Run ``ovis args`` while this process holds ``folder``'s lock, as another process would (not a
    descendant of the holder): it must exit 2 and leave only the lock file; returns its stderr."""
    with folder_lock(folder):
        env = os.environ.pop(HELD_LOCKS_ENV)
        try:
            assert ovis(args) == 2
        finally:
            os.environ[HELD_LOCKS_ENV] = env
        assert sorted(p.name for p in folder.iterdir()) == [LOCK]
    return capsys.readouterr().err


@pytest.mark.parametrize("spelling", [["--out", "{}"], ["--out={}"], ["--ou", "{}"], ["--ou={}"]])
def test_every_spelling_of_splits_out_locks_the_folder(spelling, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["splits", "--protocol", "coco_voc_nonvoc", "--train-instances", str(ANN / "instances_train2017.json"),
            "--val-instances", str(ANN / "instances_val2017.json"), *(s.format(out) for s in spelling)]
    assert f"{out} is in use by another ovis process (pid {os.getpid()})" in refused_while_locked(args, out, capsys)
    assert ovis(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["partition.json", "train_base.json", "val.json"]


def test_eval_out_and_curves_run_dir_are_locked(tmp_path, capsys):
    """`ovis eval --out` and `ovis curves` refuse a folder another process writes, and write nothing."""
    out, run = tmp_path / "ev", tmp_path / "run"
    gt = ANN / "instances_val2017.json"
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    evaluate = ["eval", "--protocol", "coco", "--gt", str(gt), "--detections", str(dets), "--iou-type", "bbox",
                "--out", str(out)]
    curves = ["curves", "--recipe", "demo_ggn", "--run-dir", str(run)]
    run.mkdir()
    for args, folder in ((evaluate, out), (curves, run)):
        err = refused_while_locked(args, folder, capsys)
        assert f"{folder.resolve()} is in use by another ovis process" in err and len(err.strip().splitlines()) == 1
    assert ovis(evaluate) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]
