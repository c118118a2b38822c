"""Timing, load and memory readings shared by every benchmark and the soak: one home for how headserve measures.

- ``call_seconds`` / ``in_process_rate``: a callable timed in this process (after one warm call).
- ``run_load``: threads, each with its own client, start together and send until a count, a time budget or a
  total runs out; per-call latencies, failures by type, and a probe (server CPU, server RSS) read at the start
  and the end of the measured part. Unless the caller counts failures (the soak), the first failure is raised
  once every thread has stopped: a benchmark never reports a rate over calls that did not happen.
- ``interleaved_rounds``: every configuration measured once per round, rounds repeated, so a slow moment of
  the machine falls on all of them alike; ``Measured`` keeps the samples and shows median [min, max].
- ``/proc`` readers: a server session's CPU seconds and resident memory, this process's peak RSS.

Torch-free: the callables that the benchmarks time bring their own imports.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Sequence, TypeVar

import numpy as np

from headserve.contract import PIXELS
from headserve.processes import PROC, session_members

C = TypeVar("C")
READY_TIMEOUT_S = 600.0  # how long threads of a load wait for each other to be connected and warm
TRITON_TIMEOUT_S = 600.0  # deadline of every raw tritonclient call a benchmark makes


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min, max]`` of ``values`` times ``scale``; the median alone for one value, "-" for none."""
    if not values:
        return "-"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}, {max(values) * scale:.{digits}f}]"


@dataclass
class Load:
    """What one threaded load did, over its measured part (after every thread was connected and warm)."""

    calls: int  # calls started (each took a ticket), failed ones included
    items: int  # items (crops, images) in the calls that succeeded
    wall_s: float  # from the start line to the last thread's end
    latencies_s: list[float]  # one per successful call
    errors: dict[str, int]  # failed calls by exception type (only when the caller counts them)
    probe: tuple[float, float] | None  # the probe's reading at the start line and at the end; None: no probe

    @property
    def rate(self) -> float:
        """Items per second of wall time."""
        return self.items / self.wall_s

    @property
    def probe_per_s(self) -> float | None:
        """The probe's change per second of wall time: cores used, when the probe reads CPU seconds."""
        return None if self.probe is None else (self.probe[1] - self.probe[0]) / self.wall_s


@dataclass
class Measured:
    """Samples of one configuration across rounds: items per second, latencies, server CPU cores."""

    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)

    def add(self, sample: float | Load) -> None:
        """One round's sample: a rate measured in process, or a load with its latencies and CPU use."""
        if not isinstance(sample, Load):
            self.rates.append(sample)
            return
        self.rates.append(sample.rate)
        self.latencies_ms.extend(s * 1e3 for s in sample.latencies_s)
        if sample.probe_per_s is not None:
            self.cores.append(sample.probe_per_s)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    def cell(self) -> str:
        return spread(self.rates)


def interleaved_rounds(rounds: int, sides: Mapping[str, Callable[[], float | Load]],
                       results: dict[str, Measured] | None = None) -> dict[str, Measured]:
    """Run every side once per round, in order, for ``rounds`` rounds; each side's samples in its ``Measured``."""
    results = results if results is not None else {}
    for r in range(rounds):
        print(f"    round {r + 1}/{rounds}", flush=True)
        for name, side in sides.items():
            results.setdefault(name, Measured()).add(side())
    return results


def call_seconds(call: Callable[[], Any], repeats: int, warm: bool = True,
                 sync: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls (after one unmeasured call when ``warm``); ``sync`` runs before
    starting and before stopping each clock (``torch.cuda.synchronize`` for work queued on a GPU)."""
    if warm:
        call()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        call()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def in_process_rate(call: Callable[[Any], Any], batch: Any, requests: int, warm_with: Any = None) -> float:
    """Items per second of ``requests`` back-to-back calls on ``batch``, after one call on ``warm_with``
    (default: the batch's first item, which starts arenas and threads without the batch's cost)."""
    call(batch[:1] if warm_with is None else warm_with)
    t0 = time.perf_counter()
    for _ in range(requests):
        call(batch)
    return requests * len(batch) / (time.perf_counter() - t0)


def run_load(clients: int, open_client: Callable[[int], ContextManager[C]], call: Callable[[C, int], Any], *,
             items_per_call: int = 1, requests: int | None = None, seconds: float | None = None, total: int = 0,
             warm: Callable[[C], Any] | None = None, probe: Callable[[], float] | None = None,
             count_errors: bool = False) -> Load:
    """``clients`` threads, each with the client ``open_client(worker)`` opens, send calls together.

    Each thread warms its client (``warm``), then waits at a start line; the clock and the probe start when
    every thread is there. A thread sends until it made ``requests`` calls, ``seconds`` have passed since the
    start line, or ``total`` calls were started in all (0: no total). ``call(client, turn)`` makes one call;
    ``turn`` is the worker's index plus the calls it made before, so workers start on different models.
    """
    assert requests is not None or seconds is not None or total, "a load needs a bound"
    lock = threading.Lock()
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    failures: list[BaseException] = []
    started = [0, 0]  # calls started, items answered
    deadline = [float("inf")]
    start: dict[str, Any] = {}

    def at_start_line() -> None:
        """Run once every thread is there and before any is released, so that no call precedes the clock
        (reading the probe scans /proc for milliseconds: a whole call of a small model)."""
        start["probe"] = probe() if probe is not None else None
        start["t0"] = time.perf_counter()
        if seconds is not None:
            deadline[0] = time.monotonic() + seconds

    start_line = threading.Barrier(clients + 1, action=at_start_line, timeout=READY_TIMEOUT_S)

    def take_ticket(made: int) -> bool:
        with lock:
            if (requests is not None and made >= requests) or time.monotonic() >= deadline[0] \
                    or (total and started[0] >= total):
                return False
            started[0] += 1
            return True

    def worker(index: int) -> None:
        try:
            with open_client(index) as client:
                if warm is not None:
                    warm(client)
                start_line.wait()
                made = 0
                while take_ticket(made):
                    t0 = time.perf_counter()
                    try:
                        call(client, index + made)
                    except Exception as exc:
                        if not count_errors:
                            raise
                        with lock:  # counted by type; the caller's verdict is the count
                            errors[type(exc).__name__] += 1
                    else:
                        elapsed = time.perf_counter() - t0
                        with lock:
                            latencies.append(elapsed)
                            started[1] += items_per_call
                    made += 1
        except BaseException as exc:  # raised in the caller's thread once every worker stopped
            with lock:
                failures.append(exc)
            start_line.abort()  # a worker that never reaches the start line must not leave the others waiting

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass  # a worker failed before the start: its error is raised below
    for t in threads:
        t.join()
    wall = time.perf_counter() - start.get("t0", 0.0)
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if failures:  # every worker waited and none failed: the start line's deadline passed
        raise TimeoutError(f"the load's {clients} clients were not all connected and warm within "
                           f"{READY_TIMEOUT_S:.0f} s")
    before = start["probe"]
    after = probe() if probe is not None else None
    return Load(started[0], started[1], wall, latencies, dict(errors),
                None if before is None or after is None else (before, after))


# ---------------------------------------------------------------------------------------------
# Raw calls to a served model (tritonclient, no headserve client in between).


def triton_input(array: np.ndarray, name: str = PIXELS) -> Any:
    """A tritonclient gRPC input holding ``array`` (its Triton type from the numpy dtype)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inp = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    inp.set_data_from_numpy(array)
    return inp


def triton_load(url: str, model: str, array: np.ndarray, clients: int, requests: int,
                probe: Callable[[], float] | None = None) -> Load:
    """``clients`` tritonclient gRPC connections, each sending ``requests`` requests of ``array`` to ``model``."""
    import tritonclient.grpc as grpcclient

    inputs = [triton_input(array)]  # read-only while requests are built: shared by the threads
    return run_load(clients, lambda _: grpcclient.InferenceServerClient(url),
                    lambda client, _: client.infer(model, inputs, client_timeout=TRITON_TIMEOUT_S),
                    items_per_call=len(array), requests=requests, probe=probe)


# ---------------------------------------------------------------------------------------------
# Linux /proc readings (0 where /proc does not exist).


def _status_kib(pid: int | str, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (VmRSS, VmHWM); 0 when the process is gone or has none."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:  # exited meanwhile
        pass
    return 0


def session_rss_mib(session_id: int) -> float:
    """Resident memory of every process in the server's session (tritonserver and its stubs)."""
    return sum(_status_kib(pid, "VmRSS") for pid in session_members(session_id)) / 1024


def session_cpu_seconds(session_id: int) -> float:
    """CPU time (user + system) of every live process in the server's session: tritonserver and its stubs."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in session_members(session_id):
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        total += int(fields[11]) + int(fields[12])  # after "(comm)": state ppid ... utime(11) stime(12)
    return total / tick


def peak_rss_mib() -> float:
    """This process's peak resident memory (the kernel's high-water mark, VmHWM)."""
    return _status_kib("self", "VmHWM") / 1024


# ---------------------------------------------------------------------------------------------
# Process trees: a driver and every process it started (Ray's GCS, raylet, agents and workers), sampled.


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    found = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return found


def process_tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and every live descendant of it."""
    parents = _parents() if parents is None else parents
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            tree.append(pid)
            todo += children.get(pid, [])
    return tree


def process_name(pid: int) -> str:
    """What a process is: Ray's title for its workers (``ray::ShardEncoder``, ``ray::IDLE``), else the program
    or script it runs (``raylet``, ``gcs_server``, ``agent.py``)."""
    try:
        args = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = args[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split(" ")[0]
    for arg in args[:4]:  # python -m/.../script.py: the script names it
        text = arg.decode(errors="replace")
        if text.endswith(".py"):
            return text.rsplit("/", 1)[-1]
    return first.rsplit("/", 1)[-1] or "?"


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (Ray's object store in /dev/shm, libraries) split among the processes
    that map them, so a sum over processes counts each page once, where a sum of RSS counts it in each."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    import os

    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeSampler:
    """Samples process trees on a thread until stopped: peak summed PSS and RSS, CPU seconds per process.

    ``roots`` maps a label (a node, "driver") to a root pid; each process counts under the first root whose tree
    holds it. A process's CPU is its last reading, so one that exits between samples loses at most an interval.
    """

    def __init__(self, roots: Callable[[], Mapping[str, int]], interval_s: float = 0.25) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.peak_pss_mib = 0.0
        self.peak_rss_mib = 0.0
        self.cpu: dict[int, tuple[str, str, float]] = {}  # pid -> (label, name, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        parents = _parents()
        seen: set[int] = set()
        pss = rss = 0
        for label, root in self.roots().items():
            for pid in process_tree(root, parents):
                if pid in seen:
                    continue
                seen.add(pid)
                pss += _pss_kib(pid)
                rss += _status_kib(pid, "VmRSS")
                _, old, before = self.cpu.get(pid, (label, "ray::IDLE", 0.0))
                name = process_name(pid)  # a Ray worker's title names the task it runs, IDLE between tasks
                self.cpu[pid] = (label, old if name in ("ray::IDLE", "?") else name, max(_cpu_s(pid), before))
        self.peak_pss_mib = max(self.peak_pss_mib, pss / 1024)
        self.peak_rss_mib = max(self.peak_rss_mib, rss / 1024)

    def cpu_by(self, key: Callable[[str, str], str]) -> dict[str, float]:
        """CPU seconds summed by ``key(label, name)``."""
        out: dict[str, float] = collections.defaultdict(float)
        for label, name, seconds in self.cpu.values():
            out[key(label, name)] += seconds
        return dict(out)
