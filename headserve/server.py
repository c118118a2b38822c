"""The local Triton: the real ``tritonserver`` binary from the nvidia-pytriton wheel, on loopback.

That build carries only the python backend; its stub links libpython, so the interpreter's own
``lib`` directory goes first on ``LD_LIBRARY_PATH`` and the interpreter's site-packages on
``PYTHONPATH`` (the stub's models import onnxruntime from there). The stub matching this Python's
version is linked into a private backend directory, the way pytriton prepares it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from headserve.errors import ServerError


@dataclass(frozen=True)
class ServerConfig:
    """How to run the local server."""

    repository: Path  # model repository to serve
    grpc_port: int = 0  # 0 picks a free port
    http_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"  # loopback only: this is a development server
    model_control: str = "none"  # "none", "poll" or "explicit"
    poll_secs: int = 2  # repository poll interval in "poll" mode
    startup_timeout_s: float = 120.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "nvidia-pytriton is not installed, so there is no local tritonserver; run `make venv` "
            "(or pip install 'headserve[full]')"
        ) from exc
    return Path(pytriton.__file__).parent


def _backend_dir(root: Path) -> Path:
    """backends/python with the stub for this interpreter's version; built once per user."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    base = Path(tempfile.gettempdir()) / f"headserve-triton-{os.getuid()}-{version}" / "backends"
    python_dir = base / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    src = root / "tritonserver" / "backends" / "python"
    links = {p.name: p for p in src.iterdir() if p.is_file()}
    links["triton_python_backend_stub"] = stub
    for name, target in links.items():
        link = python_dir / name
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            tmp = python_dir / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)
    return base


def server_env(root: Path) -> dict[str, str]:
    env = os.environ.copy()
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(site + [p for p in env.get("PYTHONPATH", "").split(":") if p]))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # One thread per ONNX Runtime / BLAS pool in the stubs: instances scale by count, not threads.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalTriton:
    """A running tritonserver; use as a context manager so it always shuts down."""

    def __init__(self, config: ServerConfig, log: IO[str] | None = None) -> None:
        self.config = config
        self.grpc_port = config.grpc_port or free_port(config.host)
        self.http_port = config.http_port or free_port(config.host)
        self.metrics_port = config.metrics_port or free_port(config.host)
        self._log = log
        self._log_file: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.http_port}"

    def command(self) -> list[str]:
        """The binary and the shared flags (headserve.triton_flags), bound to loopback and free ports."""
        from headserve.triton_flags import TritonFlags

        root = _pytriton_root()
        c = self.config
        flags = TritonFlags(repository=str(Path(c.repository).resolve()), model_control=c.model_control,
                            poll_secs=c.poll_secs, host=c.host, grpc_port=self.grpc_port, http_port=self.http_port,
                            metrics_port=self.metrics_port, gpu_metrics=False, log_verbose=c.log_verbose,
                            backend_directory=str(_backend_dir(root)))
        return [str(root / "tritonserver" / "bin" / "tritonserver"), *flags.args(), *c.extra_args]

    def start(self) -> "LocalTriton":
        repo = Path(self.config.repository)
        if not repo.is_dir():
            raise ServerError(f"model repository {repo} does not exist; run `headserve export` or `make demo` first")
        root = _pytriton_root()
        if self._log is None:
            fd, name = tempfile.mkstemp(prefix="headserve-tritonserver-", suffix=".log")
            self._log_file = Path(name)
            out: IO | int = os.fdopen(fd, "w")
        else:
            out = self._log
        self.process = subprocess.Popen(self.command(), env=server_env(root), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + self.config.startup_timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerError(f"tritonserver exited with status {self.process.returncode} during start-up:\n"
                                      + self.log_tail())
                try:
                    if client.is_server_ready():
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.config.startup_timeout_s:.0f}s:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        if self._log_file is None or not self._log_file.exists():
            return "(log went to the caller's stream)"
        return "\n".join(self._log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)  # Triton drains in-flight requests on SIGINT
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> "LocalTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log_file is not None:
            self._log_file.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# `headserve serve REPO`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository with the local tritonserver until Ctrl-C")
    p.add_argument("repository", type=Path, help="model repository (local variant)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", default="none", choices=("none", "poll", "explicit"))
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    config = ServerConfig(repository=args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, model_control=args.model_control_mode)
    server = LocalTriton(config, log=sys.stderr)
    with server:
        print(f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url} (Ctrl-C stops it)", flush=True)
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping tritonserver ...", flush=True)
    return 0
