"""The lock that keeps a second concurrent ovis process out of a folder it writes (standard library only,
so that every command can take it without importing the rest of ovis).

``flock`` on ``<folder>/.ovis.lock``. A process that takes the folder (its *owner*) locks the file
exclusively, which fails at once while any other process holds any lock on it, writes its pid there
and then keeps a *shared* lock. The processes of its run keep the folder locked with it, each with a
shared lock of its own, for as long as any of them lives, even when the owner is killed:

* a child started with :func:`held_lock_fds` in ``pass_fds`` (the notebook kernel of ``ovis
  reproduce``) holds the owner's own lock from its first instruction: a ``flock`` belongs to the open
  file, which the child keeps open;
* a descendant started any other way (a torchrun worker, whose launcher closes inherited files) finds
  the folder and its owner's pid in ``$OVIS_HELD_LOCKS`` and, on its own :func:`folder_lock` of the
  folder, joins with a shared lock instead of failing.

So an orphaned kernel or worker still writing into a run folder keeps a new ``ovis reproduce`` out of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK = ".ovis.lock"
# "<pid> <folder>" lines: folders locked by this process or an ancestor (the `ovis reproduce` that
# started this notebook kernel, the launcher of this torchrun worker), which it may write into
HELD_LOCKS_ENV = "OVIS_HELD_LOCKS"

_HELD: dict[int, Path] = {}  # fd -> folder: the lock files this process holds open, owned or joined


class FolderInUse(OSError):
    """Another live process holds the lock on the folder (an ``OSError``: the CLI prints it as one line)."""


def held_lock_fds() -> tuple[int, ...]:
    """The open lock files of the folders this process holds. A child started with them in
    ``subprocess.Popen(pass_fds=...)`` keeps those folders locked for as long as it lives, even if
    this process is killed (``flock`` locks belong to the open file)."""
    return tuple(_HELD)


def _held_by_ancestor(folder: Path) -> set[int]:
    entries = os.environ.get(HELD_LOCKS_ENV, "").splitlines()
    return {int(pid) for pid, _, path in (e.partition(" ") for e in entries) if pid.isdigit() and path == str(folder)}


def _read_pid(fd: int) -> int:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else -1


def _lock_file(path: Path, shared: bool = False) -> tuple[int | None, int | None]:
    """``(fd, None)`` with ``path`` locked by this process (exclusively, or ``shared``; created if
    missing), or ``(None, pid)`` with the pid written in it when another process's lock is in the way."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its holder removed the folder on release: create it afresh
            continue
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            return None, holder
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, None
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file its holder unlinked on release: lock the one now at `path`


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use(folder: Path, holder: int | None) -> FolderInUse:
    if holder is None or holder <= 0:
        who = "pid ?"
    elif _alive(holder):
        who = f"pid {holder}"
    else:  # killed, but a kernel or worker it started still runs and holds the lock
        who = f"started by pid {holder}, which has exited; a process it started still runs"
    return FolderInUse(f"{folder} is in use by another ovis process ({who}); "
                       "wait for it to finish or write into another folder")


def _join(folder: Path, owners: set[int]) -> int | None:
    """A shared lock on ``folder`` beside its owner's, which must be one of ``owners`` (an ancestor of
    this process): the fd, or None when no one holds the folder any more (take it then)."""
    fd, holder = _lock_file(folder / LOCK, shared=True)
    if fd is None:  # another process is taking the folder this moment
        raise _in_use(folder, holder)
    holder = _read_pid(fd)
    if holder in owners:
        return fd
    os.close(fd)
    if holder < 0:  # its owner released it (a lock file made afresh)
        return None
    raise _in_use(folder, holder)  # the owner that started this process is gone, and another took the folder


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an advisory lock on ``folder`` (created if missing) for the block, or raise
    :class:`FolderInUse` at once, naming the folder and the holder's pid.

    The kernel drops the lock when its last holder dies, so a killed run leaves no stale lock; while a
    kernel or a worker of a killed run still lives it holds the folder (see the module's docstring).
    The lock file, and the folder if this call created it and it is still empty, are removed on
    release unless a process of the run still holds it. A nested ``folder_lock`` of the same folder,
    in this process or in a descendant (``$OVIS_HELD_LOCKS`` is inherited), joins the lock.
    """
    folder = Path(folder).resolve()
    created = not folder.exists()
    while True:
        fd, holder = _lock_file(folder / LOCK)
        if fd is not None:
            break
        owners = _held_by_ancestor(folder)
        if holder not in owners:
            raise _in_use(folder, holder)
        joined = _join(folder, owners)
        if joined is not None:
            _HELD[joined] = folder
            try:
                yield folder
            finally:
                del _HELD[joined]
                os.close(joined)
            return
    held = os.environ.get(HELD_LOCKS_ENV)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        # shared from now on, so that the processes of this run can join; no one else can (they lock
        # exclusively), and Linux converts a flock atomically
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BaseException:
        (folder / LOCK).unlink(missing_ok=True)
        os.close(fd)
        raise
    _HELD[fd] = folder
    os.environ[HELD_LOCKS_ENV] = "\n".join(filter(None, [held, f"{os.getpid()} {folder}"]))
    try:
        yield folder
    finally:
        if held is None:
            os.environ.pop(HELD_LOCKS_ENV, None)
        else:
            os.environ[HELD_LOCKS_ENV] = held
        del _HELD[fd]
        try:  # exclusive again when no other process of the run holds it: then the file can go
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a kernel or worker of this run still runs: the lock stays with it
            os.close(fd)
        else:
            (folder / LOCK).unlink(missing_ok=True)  # before unlocking: whoever then locks this inode retries
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):  # not empty: the run wrote its outputs
                    folder.rmdir()
