"""`headserve soak`: a bounded soak on loopback that stops by itself (``make soak``).

``run_soak`` builds a repository of two untrained example heads on the tiny encoder twins, serves it with the
local tritonserver, and drives it with ``clients`` threads, each with its own ``HeadClient``, alternating
heads, until ``seconds`` pass or ``requests`` are sent. Its result holds requests, errors (by type), p50/p99
latency, and the server's resident memory (tritonserver plus its python stubs) at start and end. The command
exits 1 when any request failed or the server or a stub died, so a CI step can run it as is. Figures are
reported, never asserted as speeds. The repository and the threaded load are the benchmarks' own
(``headserve.app.bench.repository``, ``headserve.app.bench.timing``).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headserve.app.bench.repository import BenchRepository
from headserve.app.bench.timing import Load, run_load, session_rss_mib
from headserve.errors import ConfigError

EXIT_SOAK_FAILED = 1  # some request failed, or the server or a stub was not alive at the end
SOAK_HEADS: dict[str, str] = {"soak_clip": "clip:tiny", "soak_dino": "dinov3:tiny"}  # head -> encoder twin


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
    """What a soak did; ``healthy_at_end`` is read after the load, while the server still runs."""

    load: Load  # requests, latencies, errors by type; its probe read the server's RSS (MiB) at start and end
    healthy_at_end: bool  # tritonserver running and every stub alive once the load stopped

    @property
    def failed(self) -> bool:
        return bool(self.load.errors) or not self.healthy_at_end

    def lines(self, config: SoakConfig) -> list[str]:
        load = self.load
        lat = np.array(load.latencies_s or [float("nan")]) * 1e3
        rss_start, rss_end = load.probe or (float("nan"), float("nan"))
        return [
            f"soak: {config.clients} clients, {len(SOAK_HEADS)} heads, {config.batch} crops per request, "
            f"{load.wall_s:.1f} s",
            f"requests: {load.calls} ({load.calls / load.wall_s:.0f}/s)",
            f"errors: {sum(load.errors.values())}" + (f" {dict(load.errors)}" if load.errors else ""),
            f"latency per request: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms",
            f"server RSS (tritonserver + stubs): start {rss_start:.0f} MiB, end {rss_end:.0f} MiB",
            f"server and every stub alive at the end: {'yes' if self.healthy_at_end else 'NO'}",
        ]


def drive(url: str, heads: list[str], config: SoakConfig, server_pid: int) -> Load:
    """Every client discovers and warms both heads, then all send together, alternating heads, until the
    budget runs out; a failed request is counted by type, never raised."""
    from headserve.client import ConnectionOptions, HeadClient

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(config.batch)]
    return run_load(config.clients, lambda _: HeadClient(url, ConnectionOptions(timeout_s=config.timeout_s)),
                    lambda client, turn: client.classify(heads[turn % len(heads)], crops),
                    items_per_call=config.batch, seconds=config.seconds, total=config.requests,
                    warm=lambda client: [client.classify(head, crops) for head in heads],
                    probe=lambda: session_rss_mib(server_pid), count_errors=True)


def run_soak(config: SoakConfig) -> SoakResult:
    """Build the two-head repository in a temporary directory, serve it, drive it, and report."""
    from headserve.encoders import get_encoder

    with tempfile.TemporaryDirectory(prefix="headserve-soak-") as tmp:
        built = BenchRepository(Path(tmp))
        for head, encoder in SOAK_HEADS.items():
            built.example_head(get_encoder(encoder), head)
        with built.serve() as server:
            assert server.process is not None
            load = drive(server.grpc_url, list(SOAK_HEADS), config, server.process.pid)
            return SoakResult(load, server.is_healthy())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="drive two example heads on a local tritonserver with many clients for a "
                                    "fixed budget; prints requests, errors, latency and the server's memory")
    p.add_argument("--clients", type=int, default=SoakConfig.clients, help="concurrent clients, one channel each")
    p.add_argument("--seconds", type=float, default=SoakConfig.seconds, help="stop after this long")
    p.add_argument("--requests", type=int, default=SoakConfig.requests,
                   help="or after this many requests in all (0: no count limit)")
    p.add_argument("--batch", type=int, default=SoakConfig.batch, help="crops per request")
    p.set_defaults(func=_soak)


def _soak(args: argparse.Namespace) -> int:
    config = SoakConfig(clients=args.clients, seconds=args.seconds, requests=args.requests, batch=args.batch)
    result = run_soak(config)
    print("\n".join(result.lines(config)))
    return EXIT_SOAK_FAILED if result.failed else 0
