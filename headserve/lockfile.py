"""One writer at a time per model repository: an advisory ``flock`` on a file inside it.

Two exports into one repository at the same moment would otherwise both read the highest version
N and both publish N+1 (one silently replacing the other, or failing half-way on a rename). The
kernel releases a ``flock`` when its holder dies, so a crashed export never leaves the repository
locked, and no stale-lock clean-up is needed. The lock file is left in place, with one exception: a
writer that created the repository directory and fails leaves nothing, so it removes the lock file
and the directories it created, if they hold nothing else. A waiter may then hold a lock on the
removed file; after locking, every writer checks that its file is still the one at the path, and
locks again where it is now otherwise.

The lock is re-entrant within one thread (an export holds it while the publish steps inside it take
it again); other threads and processes wait. Triton ignores the file: it reads only subdirectories
of a repository.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from headserve.errors import RepositoryError, RepositoryLockTimeout
from headserve.fsutil import FILE_MODE, ensure_dir

LOCK_FILE = ".headserve.lock"


@dataclass(frozen=True)
class LockConfig:
    """How long a writer waits for the repository."""

    timeout_s: float = 600.0  # an export of a large encoder takes minutes; longer means a stuck holder
    poll_s: float = 0.05  # how often a waiter retries the non-blocking lock


_held = threading.local()  # per thread: resolved repository path -> depth


def _depths() -> dict[str, int]:
    if not hasattr(_held, "depths"):
        _held.depths = {}
    return _held.depths


def check_repository_path(repo: Path) -> None:
    """Refuse a repository path that is a file (or under one) before anything is read or written."""
    for part in (repo, *repo.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == repo else f"lies under the file {part}"
                raise RepositoryError(f"`repo` {repo} {what}, not a directory; pass the model repository "
                                      "directory (it is created when missing)").about("repo", repo)
            return


@contextlib.contextmanager
def repository_lock(repo: str | os.PathLike, config: LockConfig = LockConfig()) -> Iterator[Path]:
    """Hold the repository's writer lock for the block; yields the lock file's path.

    The repository directory is created when missing (group-readable, as everything headserve writes
    there); if the block then fails and nothing but the lock file is in it, it is removed again, so a
    refused export into a new ``--repo`` leaves no directory behind.
    """
    path = Path(repo)
    check_repository_path(path)
    created = _missing_dirs(path)
    lock_path = path / LOCK_FILE
    depths = _depths()
    key = str(path.resolve())
    if depths.get(key, 0) > 0:  # this thread holds it already
        depths[key] += 1
        try:
            yield lock_path
        finally:
            depths[key] -= 1
        return
    fd = _lock(path, lock_path, config)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for a waiter's message only
        depths[key] = 1
        try:
            yield lock_path
        except BaseException:
            if created:
                _remove_created(created, lock_path)
            raise
        finally:
            depths.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _missing_dirs(path: Path) -> list[Path]:
    """The directories ``ensure_dir(path)`` would create, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    return missing


def _remove_created(created: list[Path], lock_path: Path) -> None:
    """Remove the lock file and the directories this writer created (deepest first) while it still holds the
    lock, but only where nothing else was written: a directory that holds anything more stays as it is."""
    if any(p.name != LOCK_FILE for p in created[0].iterdir()):
        return
    with contextlib.suppress(OSError):
        lock_path.unlink()
        for directory in created:
            directory.rmdir()


def _lock(path: Path, lock_path: Path, config: LockConfig) -> int:
    """An open descriptor of the lock file at ``lock_path``, locked: the file that is there once locked."""
    deadline = time.monotonic() + config.timeout_s
    while True:
        ensure_dir(path)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the umask narrows O_CREAT's mode; the server's group reads the repository
            _acquire(fd, lock_path, config, deadline)
            if _is_at(fd, lock_path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed the repository it had created: lock the file there now


def _is_at(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path`` (not one removed since it was opened)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _acquire(fd: int, lock_path: Path, config: LockConfig, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RepositoryLockTimeout(
                f"{lock_path} is held by process {holder} for over {config.timeout_s:.0f}s: another export is "
                "writing this repository; wait for it to finish (or stop it) and run this export again"
            )
        time.sleep(config.poll_s)
