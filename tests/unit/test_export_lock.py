"""Exports cannot race: writers of one repository take turns on an advisory lock that dies with its holder."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from headserve.errors import RepositoryError, RepositoryLockTimeout
from headserve.export.model_config import DataType, ModelDesc, Runtime, TensorSpec
from headserve.export.repository import publish_version
from headserve.export.validation import validate_repository
from headserve.lockfile import LOCK_FILE, LockConfig, repository_lock

WRITERS = 6
ROUNDS = 4
# fork: the children need only the already-imported exporter, and a barrier only means something when
# they start their writes within microseconds of each other, which spawning fresh interpreters would spread out.
CTX = multiprocessing.get_context("fork")


def _desc(name: str) -> ModelDesc:
    return ModelDesc(name=name, inputs=(TensorSpec("x", DataType.TYPE_FP32, (4,)),),
                     outputs=(TensorSpec("y", DataType.TYPE_FP32, (4,)),))


def _writer(repo: str, writer: int, barrier, results) -> None:
    try:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=60)
            payload = f"writer {writer} round {round_}".encode()
            version, path = publish_version(Path(repo) / "m", _desc("m"), Runtime.PRODUCTION, {"model.onnx": payload})
            results.put(("ok", writer, round_, version, str(path)))
    except BaseException as exc:  # reported to the parent, which fails the test with it
        results.put(("error", writer, -1, -1, f"{type(exc).__name__}: {exc}"))


def _drain(results, procs, expected: int) -> list[tuple]:
    """Every row the writers reported, until all are in or every writer has exited."""
    import queue

    rows: list[tuple] = []
    deadline = time.monotonic() + 120
    while len(rows) < expected and time.monotonic() < deadline:
        try:
            rows.append(results.get(timeout=0.5))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return rows


def test_writers_started_together_at_a_barrier_each_get_a_distinct_version_and_none_fails(tmp_path):
    repo = tmp_path / "repo"
    barrier = CTX.Barrier(WRITERS)
    results = CTX.Queue()
    procs = [CTX.Process(target=_writer, args=(str(repo), w, barrier, results)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    rows = _drain(results, procs, WRITERS * ROUNDS)
    errors = [r for r in rows if r[0] == "error"]
    assert errors == [] and len(rows) == WRITERS * ROUNDS
    versions = sorted(r[3] for r in rows)
    assert versions == list(range(1, WRITERS * ROUNDS + 1))
    # Every version holds exactly what its writer wrote: nothing was overwritten by another writer.
    for _, writer, round_, version, path in rows:
        assert (Path(path) / "model.onnx").read_bytes() == f"writer {writer} round {round_}".encode()
        assert Path(path).name == str(version)
    assert sorted(p.name for p in (repo / "m").iterdir() if not p.name.startswith(".")) == sorted(
        [str(v) for v in versions] + ["config.pbtxt"])
    assert [p.name for p in (repo / "m").iterdir() if ".staging." in p.name or ".old." in p.name] == []


def _hold_forever(repo: str, ready) -> None:
    with repository_lock(repo):
        ready.set()
        time.sleep(600)


def test_a_writer_killed_while_holding_the_lock_releases_it(tmp_path):
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_forever, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(timeout=30)
        # While it lives, a short wait times out and names the lock file and the holder's pid.
        with pytest.raises(RepositoryLockTimeout, match=rf"{LOCK_FILE} is held by process {holder.pid} .*wait"):
            with repository_lock(tmp_path, LockConfig(timeout_s=0.3)):
                pass
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no clean-up code runs
        holder.join(timeout=30)
        with repository_lock(tmp_path, LockConfig(timeout_s=5)) as lock:
            assert lock == tmp_path / LOCK_FILE
    finally:
        if holder.is_alive():
            holder.kill()


def test_the_lock_is_reentrant_in_one_thread_so_an_export_can_publish_inside_it(tmp_path):
    with repository_lock(tmp_path, LockConfig(timeout_s=1)):
        version, _ = publish_version(tmp_path / "m", _desc("m"), Runtime.PRODUCTION, {"model.onnx": b"x"})
        with repository_lock(tmp_path, LockConfig(timeout_s=1)):
            pass
    assert version == 1


def test_the_lock_file_does_not_disturb_repository_validation(tmp_path):
    with repository_lock(tmp_path):
        pass
    assert (tmp_path / LOCK_FILE).is_file()
    assert validate_repository(tmp_path) == []


def test_a_repository_path_that_is_a_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "repo"
    path.write_text("not a directory")
    with pytest.raises(RepositoryError, match=rf"`repo` {path} is a file, not a directory"):
        with repository_lock(path):
            pass
    assert path.read_text() == "not a directory"


def test_a_writer_that_created_the_repository_and_fails_removes_it_and_one_waiting_locks_it_afresh(tmp_path):
    """The waiter opened the lock file before the failing writer removed it; it must not hold a lock on a file
    that is no longer at the path (a newcomer would lock a fresh one beside it)."""
    import threading

    repo = tmp_path / "new" / "repo"
    inside, waiting, seen = threading.Event(), threading.Event(), {}

    def failing() -> None:
        with pytest.raises(RuntimeError, match="refused export"):
            with repository_lock(repo):
                inside.set()
                assert waiting.wait(timeout=30)
                time.sleep(0.3)  # the waiter is polling on its open lock file by now
                raise RuntimeError("refused export")

    def waiter() -> None:
        assert inside.wait(timeout=30)
        waiting.set()
        with repository_lock(repo, LockConfig(timeout_s=30)) as lock:
            seen["lock at path"] = lock.is_file()
            seen["pid"] = lock.read_text().strip()

    threads = [threading.Thread(target=failing), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert seen == {"lock at path": True, "pid": str(os.getpid())}
    assert [p.name for p in repo.iterdir()] == [LOCK_FILE]  # the waiter's own (successful) block keeps it


def test_a_refused_block_in_an_existing_repository_keeps_its_directory_and_lock_file(tmp_path):
    with repository_lock(tmp_path):
        pass
    with pytest.raises(RuntimeError, match="refused export"):
        with repository_lock(tmp_path):
            raise RuntimeError("refused export")
    assert (tmp_path / LOCK_FILE).is_file()
    new = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="failed half-way"):
        with repository_lock(new):
            (new / "m").mkdir()  # something was written after all: nothing is removed
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in new.iterdir()) == [LOCK_FILE, "m"]
