"""`headserve serve REPO`: the local tritonserver in the foreground until Ctrl-C or SIGTERM.

The flags become a ``ServerConfig``; starting, supervising and stopping the server is
headserve.server's. Port errors name the flag that chose the port.

tritonserver's own output goes to a log file (``--log-file``, by default in ./.headserve-cache/), not to
the terminal: on a machine without a GPU it prints red `E` lines about CUDA drivers that are no fault
of the user's. `serve` says once that it serves on CPU; a failure at start shows the log's last lines.

The default model control mode is explicit, so that `headserve export head` into the served repository
loads the new version here by itself: while serving, a ``ServeState`` file in the repository tells
export where this server answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO

from headserve.errors import ServerError
from headserve.server import SERVE_STATE, SUPERVISE_EVERY_S, LocalTriton, ServerConfig, ServeState, visible_gpus

LOG_DIR = Path(".headserve-cache")  # where tritonserver's log goes unless --log-file says otherwise


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository with the local tritonserver until Ctrl-C")
    p.add_argument("repository", type=Path, help="model repository (local variant)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, the one clients use (default 8001)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--model-control-mode", default="explicit", choices=("none", "poll", "explicit"),
                   help="explicit (default): `export head` into this repository loads the new version here; "
                        "poll: the server re-reads the repository every 2 s; none: it serves what it loaded at "
                        "start until restarted")
    p.add_argument("--log-file", type=Path, default=None, metavar="PATH",
                   help=f"where tritonserver's own output goes (default {LOG_DIR}/tritonserver-GRPC_PORT.log)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    config = ServerConfig(repository=args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, model_control=args.model_control_mode)
    return serve(config, args.log_file or LOG_DIR / f"tritonserver-{args.grpc_port}.log")


def serve(config: ServerConfig, log_file: Path) -> int:
    """Serve until SIGINT or SIGTERM (then drain and stop, exit 0), or until the server fails (exit 2, with why).

    tritonserver's output goes to ``log_file`` (replaced at each start); errors carry its last lines."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "w")
    except OSError as exc:
        raise ServerError(f"cannot write tritonserver's log to {log_file} ({exc.strerror}); run from a writable "
                          "directory or pass --log-file PATH") from None
    with log:
        if not visible_gpus():
            _say("no GPU: serving on CPU")
        _say(f"tritonserver's log: {log_file}")
        return _serve_logged(config, log)


def _say(message: str) -> None:
    print(f"headserve serve: {message}", file=sys.stderr, flush=True)


def _serve_logged(config: ServerConfig, log: IO[str]) -> int:
    server = LocalTriton(config, log=log)
    received: list[int] = []
    stop = threading.Event()
    state: ServeState | None = None

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            assert server.process is not None
            print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url} (pid {server.process.pid}; "
                  "Ctrl-C or SIGTERM stops it)", flush=True)
            state = ServeState(server.grpc_url, os.getpid(), config.model_control, config.poll_secs)
            announce(state, config.repository)
            while not stop.wait(SUPERVISE_EVERY_S):
                server.supervise(_say)
            print(f"{signal.Signals(received[0]).name}: stopping tritonserver, draining in-flight requests ...",
                  flush=True)
    finally:
        if state is not None:
            state.remove(config.repository)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# What `export head` into the served repository does, by model control mode.
EXPORT_REACHES: dict[str, str] = {
    "explicit": "`headserve export head` into {repo} loads the new version here",
    "poll": "new versions in {repo} are loaded within {poll}s",
    "none": "`headserve export head` into {repo} will NOT reach this server (model control mode none): restart it "
            "after exporting, or serve with --model-control-mode explicit",
}


def announce(state: ServeState, repo: Path) -> None:
    """Write the state file export reads, and say in one line what an export into ``repo`` will do."""
    try:
        state.write(repo)
    except OSError as exc:  # a read-only repository: it is served, but export cannot find this server
        print(f"headserve serve: cannot write {Path(repo) / SERVE_STATE} ({exc.strerror}); `export head` will "
              "not find this server: pass it --server " + state.grpc_url, flush=True)
        return
    print("headserve serve: " + EXPORT_REACHES[state.model_control].format(repo=repo, poll=state.poll_secs),
          flush=True)
