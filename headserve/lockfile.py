"""One writer at a time per model repository: an advisory ``flock`` on a file inside it.

Two exports into one repository at the same moment would otherwise both read the highest version
N and both publish N+1 (one silently replacing the other, or failing half-way on a rename). The
kernel releases a ``flock`` when its holder dies, so a crashed export never leaves the repository
locked, and no stale-lock clean-up is needed. The lock file itself is left in place: removing it
would let a waiter lock an unlinked inode while a newcomer locks a fresh one.

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
                raise RepositoryError(f"--repo {repo} {what}, not a directory; pass the model repository "
                                      "directory (it is created when missing)")
            return


def _repository_dir(repo: Path) -> Path:
    """The repository directory, created if missing (group-readable, as everything headserve writes there)."""
    check_repository_path(repo)
    return ensure_dir(repo)


@contextlib.contextmanager
def repository_lock(repo: str | os.PathLike, config: LockConfig = LockConfig()) -> Iterator[Path]:
    """Hold the repository's writer lock for the block; yields the lock file's path."""
    path = _repository_dir(Path(repo))
    key = str(path.resolve())
    depths = _depths()
    lock_path = path / LOCK_FILE
    if depths.get(key, 0) > 0:  # this thread holds it already
        depths[key] += 1
        try:
            yield lock_path
        finally:
            depths[key] -= 1
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask narrows O_CREAT's mode; the server's group reads the repository
        _acquire(fd, lock_path, config)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for a waiter's message only
        depths[key] = 1
        try:
            yield lock_path
        finally:
            depths.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: Path, config: LockConfig) -> None:
    deadline = time.monotonic() + config.timeout_s
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
