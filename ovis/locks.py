"""The lock that keeps a second concurrent ovis process out of a folder it writes (standard library only,
so that every command can take it without importing the rest of ovis)."""

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


class FolderInUse(OSError):
    """Another live process holds the lock on the folder (an ``OSError``: the CLI prints it as one line)."""


def _held_by_ancestor(folder: Path) -> set[int]:
    entries = os.environ.get(HELD_LOCKS_ENV, "").splitlines()
    return {int(pid) for pid, _, path in (e.partition(" ") for e in entries) if pid.isdigit() and path == str(folder)}


def _lock_file(path: Path) -> tuple[int | None, int | None]:
    """``(fd, None)`` with ``path`` created and locked by this process, or ``(None, holder pid)``."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its holder removed the folder on release: create it afresh
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            return None, int(text) if text.isdigit() else -1
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, None
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file its holder unlinked on release: lock the one now at `path`


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``folder`` (created if missing) for the block, or raise
    :class:`FolderInUse` at once, naming the folder and the holder's pid.

    ``flock`` on ``<folder>/.ovis.lock``: the kernel drops it when the holder dies, so a killed run
    leaves no stale lock. The lock file, and the folder if this call created it and it is still empty,
    are removed on release. A nested ``folder_lock`` of the same folder, in this process or in a child
    (``$OVIS_HELD_LOCKS`` is inherited), goes through without locking.
    """
    folder = Path(folder).resolve()
    created = not folder.exists()
    fd, holder = _lock_file(folder / LOCK)
    if fd is None:
        if holder in _held_by_ancestor(folder):
            yield folder
            return
        raise FolderInUse(f"{folder} is in use by another ovis process (pid {holder if holder and holder > 0 else '?'}); "
                          "wait for it to finish or write into another folder")
    held = os.environ.get(HELD_LOCKS_ENV)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        os.environ[HELD_LOCKS_ENV] = "\n".join(filter(None, [held, f"{os.getpid()} {folder}"]))
        yield folder
    finally:
        if held is None:
            os.environ.pop(HELD_LOCKS_ENV, None)
        else:
            os.environ[HELD_LOCKS_ENV] = held
        (folder / LOCK).unlink(missing_ok=True)  # before unlocking: whoever then locks this inode retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote its outputs
                folder.rmdir()
