"""A bounded soak on loopback: many clients, two heads, a fixed budget; it stops by itself.

``run_soak`` (``make soak``, ``headserve soak``) builds a repository of two untrained example heads
on the tiny encoder twins, serves it with the local tritonserver, and drives it with ``clients``
threads, each with its own ``HeadClient``, alternating heads, until ``seconds`` pass or
``requests`` are sent. Its result holds requests, errors (by type), p50/p99 latency, and the server's
resident memory (tritonserver plus its python stubs) at start and end; the soak fails on any error or
when the server or a stub died. Figures are reported, never asserted as speeds.
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headserve.errors import ConfigError
from headserve.processes import PROC, session_members


@dataclass(frozen=True)
class SoakConfig:
    """The budget and shape of a soak."""

    clients: int = 16  # concurrent callers, one HeadClient (one gRPC channel) each
    seconds: float = 60.0  # stop after this long ...
    requests: int = 0  # ... or after this many requests in all (0: no count limit)
    batch: int = 4  # crops per request
    timeout_s: float = 30.0  # per-request deadline

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError.bad_value("clients", self.clients, "a soak needs at least one client")
        if not self.seconds > 0:
            raise ConfigError.bad_value("seconds", self.seconds, "the soak's time budget must be positive")
        if self.requests < 0:
            raise ConfigError.bad_value("requests", self.requests, "use 0 for no count limit, or a count")
        if self.batch < 1:
            raise ConfigError.bad_value("batch", self.batch, "a request needs at least one crop")
        if not self.timeout_s > 0:
            raise ConfigError.bad_value("timeout_s", self.timeout_s, "the per-request deadline must be positive")


@dataclass
class SoakResult:
    requests: int
    errors: dict[str, int]
    latencies_s: list[float]
    elapsed_s: float
    rss_start_mib: float
    rss_end_mib: float
    healthy_at_end: bool

    def lines(self, config: SoakConfig) -> list[str]:
        lat = np.array(self.latencies_s or [float("nan")]) * 1e3
        return [
            f"soak: {config.clients} clients, 2 heads, {config.batch} crops per request, {self.elapsed_s:.1f} s",
            f"requests: {self.requests} ({self.requests / self.elapsed_s:.0f}/s)",
            f"errors: {sum(self.errors.values())}" + (f" {dict(self.errors)}" if self.errors else ""),
            f"latency per request: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms",
            f"server RSS (tritonserver + stubs): start {self.rss_start_mib:.0f} MiB, end {self.rss_end_mib:.0f} MiB",
            f"server and every stub alive at the end: {'yes' if self.healthy_at_end else 'NO'}",
        ]


def session_rss_mib(session_id: int) -> float:
    """Resident memory of every process in the server's session (tritonserver and its stubs)."""
    total_kib = 0
    for pid in session_members(session_id):
        try:
            for line in (PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:  # exited meanwhile
            continue
    return total_kib / 1024


def build_repository(work: Path) -> tuple[Path, list[str]]:
    """Two untrained example heads (CLIP and DINOv3 tiny twins) exported into one local repository."""
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head

    repo = work / "model_repository"
    heads = []
    for encoder, name in (("clip:tiny", "soak_clip"), ("dinov3:tiny", "soak_dino")):
        artifact = write_example_head(get_encoder(encoder), ExampleHead(name), work / name)
        export_head(artifact, repo, "local")
        heads.append(name)
    return repo, heads


def drive(url: str, heads: list[str], config: SoakConfig, server_pid: int) -> SoakResult:
    from headserve.client import ConnectionOptions, HeadClient

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(config.batch)]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    sent = [0]
    deadline = time.monotonic() + config.seconds
    start_line = threading.Barrier(config.clients + 1)

    def take_ticket() -> bool:
        with lock:
            if time.monotonic() >= deadline or (config.requests and sent[0] >= config.requests):
                return False
            sent[0] += 1
            return True

    def caller(index: int) -> None:
        with HeadClient(url, ConnectionOptions(timeout_s=config.timeout_s)) as client:
            for head in heads:  # discovery and warm-up outside the measured part
                client.classify(head, crops)
            start_line.wait()
            n = index
            while take_ticket():
                head = heads[n % len(heads)]
                n += 1
                t0 = time.perf_counter()
                try:
                    client.classify(head, crops)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                except Exception as exc:  # counted by type; the soak's verdict is the count
                    with lock:
                        errors[type(exc).__name__] += 1

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(config.clients)]
    for t in threads:
        t.start()
    start_line.wait()
    rss_start = session_rss_mib(server_pid)
    t0 = time.monotonic()
    deadline = t0 + config.seconds
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return SoakResult(sent[0], dict(errors), latencies, elapsed, rss_start, session_rss_mib(server_pid), False)


def run_soak(config: SoakConfig) -> SoakResult:
    """Build the two-head repository in a temporary directory, serve it, drive it, and report."""
    from headserve.server import LocalTriton, ServerConfig

    with tempfile.TemporaryDirectory(prefix="headserve-soak-") as tmp:
        repo, heads = build_repository(Path(tmp))
        with LocalTriton(ServerConfig(repository=repo)) as server:
            assert server.process is not None
            result = drive(server.grpc_url, heads, config, server.process.pid)
            result.healthy_at_end = server.is_healthy()
    return result
