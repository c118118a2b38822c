"""`headserve serve REPO`: the local tritonserver in the foreground until Ctrl-C or SIGTERM.

The flags become a ``ServerConfig``; starting, supervising and stopping the server is
headserve.server's. Port errors name the flag that chose the port.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from headserve.server import SUPERVISE_EVERY_S, LocalTriton, ServerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository with the local tritonserver until Ctrl-C")
    p.add_argument("repository", type=Path, help="model repository (local variant)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", default="none", choices=("none", "poll", "explicit"))
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    return serve(ServerConfig(repository=args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                              metrics_port=args.metrics_port, model_control=args.model_control_mode))


def serve(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM (then drain and stop, exit 0), or until the server fails (exit 2, with why)."""
    server = LocalTriton(config, log=sys.stderr)
    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            assert server.process is not None
            print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url} (pid {server.process.pid}; "
                  "Ctrl-C or SIGTERM stops it)", flush=True)
            while not stop.wait(SUPERVISE_EVERY_S):
                server.supervise(lambda message: print(f"headserve serve: {message}", file=sys.stderr, flush=True))
            print(f"{signal.Signals(received[0]).name}: stopping tritonserver, draining in-flight requests ...",
                  flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
