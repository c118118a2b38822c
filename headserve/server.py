"""The local Triton: the real ``tritonserver`` binary from the nvidia-pytriton wheel, on loopback.

That build carries only the python backend; its stub links libpython, so the interpreter's own
``lib`` directory goes first on ``LD_LIBRARY_PATH`` and the interpreter's site-packages on
``PYTHONPATH`` (the stub's models import onnxruntime from there). The stub matching this Python's
version is linked into a private backend directory, the way pytriton prepares it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from headserve.contract import BOXES
from headserve.errors import ConfigError, PortInUseError, ServerError, ServerExitedError, StubUnhealthyError
from headserve.processes import command_line, listening_inodes, session_members, socket_inodes, stub_processes

MODEL_CONTROL_MODES: tuple[str, ...] = ("none", "poll", "explicit")  # tritonserver's --model-control-mode values


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
    pass_env: tuple[str, ...] = ()  # extra environment variable names tritonserver and its stubs may see

    def __post_init__(self) -> None:
        for setting in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, setting)
            if not 0 <= port <= 65535:
                raise ConfigError.bad_value(setting, port, "a port is 1 to 65535, or 0 for a free one")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError.bad_value("model_control", repr(self.model_control),
                                        f"use one of {', '.join(MODEL_CONTROL_MODES)}")


SERVE_STATE = ".headserve-serve.json"  # in the served repository while `headserve serve` runs there


@dataclass(frozen=True)
class ServeState:
    """What a running `headserve serve` tells `export` about itself, in the repository it serves.

    An export into a repository that a local server serves must reach that server, or the server keeps
    answering with the old version while `repo list` shows the new one. The file is the one place both
    commands know (the repository path), written at start and removed at exit; one left behind by a
    killed server names a pid that is gone (or now runs something else) and is ignored.
    """

    grpc_url: str  # HOST:PORT of its tritonserver's gRPC endpoint
    pid: int  # the `headserve serve` process
    model_control: str  # none | poll | explicit: whether an export can ask it to load new versions
    poll_secs: int  # how often it re-reads the repository, in poll mode

    def write(self, repo: Path) -> Path:
        """Write the state into ``repo`` (temp file, then rename: a reader never sees half of it)."""
        path = Path(repo) / SERVE_STATE
        tmp = path.with_name(f"{path.name}.{self.pid}.tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        os.replace(tmp, path)
        return path

    def remove(self, repo: Path) -> None:
        """Remove the state file if it is still this server's (another `serve` may have started there since)."""
        if ServeState.read(repo, check_alive=False) == self:
            (Path(repo) / SERVE_STATE).unlink(missing_ok=True)

    @classmethod
    def read(cls, repo: Path, check_alive: bool = True) -> "ServeState | None":
        """The state of the `headserve serve` running on ``repo``; None when there is none, or it has exited."""
        try:
            state = cls(**json.loads((Path(repo) / SERVE_STATE).read_text()))
        except (OSError, ValueError, TypeError):  # absent, or not a state this version wrote: no server to reach
            return None
        if check_alive and not _is_serve_process(state.pid):
            return None
        return state


def _is_serve_process(pid: int) -> bool:
    """Is ``pid`` a running `headserve serve`? A pid can be reused by any process once its owner exited."""
    argv = command_line(pid)
    return "serve" in argv and any("headserve" in arg for arg in argv)


def visible_gpus(environ: dict[str, str] | os._Environ = os.environ, dev: Path = Path("/dev")) -> int:
    """How many NVIDIA GPUs tritonserver could use here: the driver's device nodes, narrowed by
    CUDA_VISIBLE_DEVICES when it is set. Asked without importing torch or loading CUDA, so `serve` stays
    light; Triton itself only finds out by failing, in red `E` lines about the CUDA driver."""
    nodes = [p for p in dev.glob("nvidia*") if p.name[len("nvidia"):].isdigit()]
    chosen = environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return len(nodes)
    ids = [i for i in chosen.split(",") if i.strip() and i.strip() != "-1"]
    return min(len(nodes), len(ids))


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
    """backends/python with the stub for this interpreter's version; built once per user and installation.

    The directory holds links into one nvidia-pytriton installation, so it is keyed by that installation's
    path too: two environments of one user (two projects, two checkouts) sharing it would re-point each
    other's links while their servers run, and a running server would start its next stub from the other
    environment, or from one since deleted.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    installation = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / f"headserve-triton-{os.getuid()}-{version}-{installation}" / "backends"
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


# The environment tritonserver and its python stubs get: what they need to find libraries, Python
# packages, a home and a temp dir, the locale, thread counts and devices. Anything else (hub tokens,
# cloud keys, passwords) stays with the caller: the stubs run model code, and their environment is
# readable by anyone who can read /proc/<pid>/environ as this user.
ENV_NAMES: frozenset[str] = frozenset({
    "PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "HOME", "USER", "LOGNAME", "SHELL",
    "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
})
ENV_PREFIXES: tuple[str, ...] = ("LC_", "OMP_", "KMP_", "MKL_", "CUDA_", "ORT_")


def allowed_env(environ: dict[str, str] | os._Environ, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The allow-listed part of ``environ`` (plus the names in ``extra``)."""
    names = ENV_NAMES | set(extra)
    return {k: v for k, v in environ.items() if k in names or k.startswith(ENV_PREFIXES)}


def server_env(root: Path, extra: tuple[str, ...] = ()) -> dict[str, str]:
    env = allowed_env(os.environ, extra)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(site + [p for p in env.get("PYTHONPATH", "").split(":") if p]))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # The stubs' numpy glue runs single-threaded; ONNX Runtime's threads come from each model's config
    # (intra_op_threads), which OpenMP settings do not touch in onnxruntime's own thread pool.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ServerConfig's field for each port, as ``ports`` names them: errors about a port name its setting.
_PORT_SETTINGS: dict[str, str] = {"gRPC": "grpc_port", "HTTP": "http_port", "metrics": "metrics_port"}

SUPERVISE_EVERY_S = 0.5  # how often `serve` checks that tritonserver runs and its stubs live
StubKey = tuple[str, str, str]  # (model, version, instance) of a python-backend stub


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", taken: Sequence[int] = ()) -> list[int]:
    """``count`` distinct free ports, none in ``taken``. All sockets stay bound until every port is picked:
    asked one at a time, the kernel may hand back a port it just released, and two endpoints of one server
    would then collide (seen as "HTTP and metrics at the same address and port")."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                ports.append(port)
        return ports


class LocalTriton:
    """A running tritonserver; use as a context manager so it always shuts down."""

    def __init__(self, config: ServerConfig, log: IO[str] | None = None) -> None:
        self.config = config
        given = (config.grpc_port, config.http_port, config.metrics_port)
        spare = iter(free_ports(sum(1 for p in given if not p), config.host, taken=[p for p in given if p]))
        self.grpc_port, self.http_port, self.metrics_port = (p or next(spare) for p in given)
        self._log = log
        self._pump: _LogPump | None = None
        self.process: subprocess.Popen | None = None
        self._stubs: dict[StubKey, frozenset[int]] = {}  # every model instance's stub seen alive -> its pids
        self._suspects: set[tuple[str, str]] = set()  # (model, instance) found dead at the last check
        self._health_client: Any = None  # tritonclient gRPC client for the repository index, made on first use

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
        self._check_ports_free()
        self.process = subprocess.Popen(self.command(), env=server_env(root, self.config.pass_env),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        assert self.process.stdout is not None  # stdout=PIPE above
        self._pump = _LogPump(self.process.stdout, self._log)
        self._pump.start()
        try:
            self._wait_ready()
            self._probe_models()
            self._remember_stubs()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def ports(self) -> dict[str, int]:
        return {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}

    def _check_ports_free(self) -> None:
        """Refuse ports another process listens on: its readiness answer would be taken for ours."""
        for kind, port in self.ports.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no owner
                try:
                    s.bind((self.config.host, port))
                except OSError as exc:
                    raise PortInUseError(
                        f"{kind} port {port} on {self.config.host} is already in use ({exc.strerror}); stop the "
                        f"process listening there or pick another port").about(_PORT_SETTINGS[kind], port) from None

    def _foreign_listeners(self, port: int) -> set[int]:
        """Sockets listening on ``port`` that our tritonserver does not hold."""
        assert self.process is not None
        return listening_inodes(port, self.config.host) - socket_inodes(self.process.pid)

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + self.config.startup_timeout_s
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    tail = self.log_tail()
                    if "already in use" in tail:
                        raise PortInUseError(f"tritonserver could not listen on one of its ports "
                                             f"({_ports_text(self.ports)}): already in use; stop the process "
                                             f"listening there or pick other ports:\n{tail}")
                    raise ServerError(f"tritonserver exited with status {self.process.returncode} during start-up:\n"
                                      + tail)
                try:
                    ready = client.is_server_ready()
                except Exception:  # not listening yet
                    ready = False
                if ready and self._owns_ports():
                    return
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(f"tritonserver was not ready after {self.config.startup_timeout_s:.0f}s:\n" + self.log_tail())

    def _probe_models(self) -> None:
        """Send every READY model one request and check each declared output comes back in its declared shape.

        Triton's READY means the model loaded, not that it answers: python stubs running with a numpy the
        backend does not support answer every request with empty tensors, which a client would otherwise
        blame on its crops. Models that take encoded bytes (decoders) need a real image and are left to
        their own tests.
        """
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            index = client.get_model_repository_index(client_timeout=10.0)
            for name, version in sorted({(m.name, m.version) for m in index.models if m.state == "READY"}):
                config = client.get_model_config(name, version, as_json=True, client_timeout=10.0)["config"]
                batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
                inputs = _probe_inputs(config.get("input", []), batch)
                if inputs is None:
                    continue
                outputs = config.get("output", [])
                try:
                    answer = client.infer(name, inputs, model_version=version, client_timeout=120.0,
                                          outputs=[grpcclient.InferRequestedOutput(o["name"]) for o in outputs])
                except InferenceServerException as exc:
                    raise ServerError(f"model {name} (version {version}) is READY but failed a probe request: "
                                      f"{exc.message()}. See the server log:\n{self.log_tail()}") from exc
                for spec in outputs:
                    want = batch + [int(d) for d in spec.get("dims", [])]
                    got = answer.as_numpy(spec["name"])
                    shape = list(got.shape) if got is not None else None
                    if shape is None or len(shape) != len(want) or any(w not in (-1, g) for w, g in zip(want, shape)):
                        raise ServerError(
                            f"model {name} (version {version}) is READY but answered {spec['name']!r} with shape "
                            f"{shape} where its config declares {want}: it cannot serve. Python-backend stubs "
                            "answer empty tensors when their numpy is one the backend does not support "
                            "(nvidia-pytriton needs numpy<2: reinstall with `make venv`); see the server log")

    def _owns_ports(self) -> bool:
        """True once our process listens on the gRPC port; a foreign listener there is an error, not a wait."""
        assert self.process is not None
        for kind, port in self.ports.items():
            foreign = self._foreign_listeners(port)
            if foreign:
                raise PortInUseError(
                    f"{kind} port {port} on {self.config.host} is also held by another process (socket inodes "
                    f"{sorted(foreign)}), so readiness answers may not come from this tritonserver (pid "
                    f"{self.process.pid}); stop that process or pick another port").about(_PORT_SETTINGS[kind], port)
        return bool(listening_inodes(self.grpc_port, self.config.host) & socket_inodes(self.process.pid))

    def log_tail(self, lines: int = 40) -> str:
        if self._pump is None:
            return "(tritonserver has not been started)"
        return "\n".join(self._pump.tail(lines))

    # --- health: is the server that was started still the one serving, and can its models answer? ---------

    def check_alive(self) -> None:
        """Raise ``ServerExitedError`` (with the last log lines) when tritonserver is no longer running."""
        proc = self.process
        if proc is None or proc.poll() is None:
            return
        code = proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise ServerExitedError(f"tritonserver (pid {proc.pid}) {how} while serving {self.config.repository}; "
                                f"restart `headserve serve`. Its last log lines:\n{self.log_tail()}")

    def _ready_versions(self) -> set[tuple[str, str]]:
        """(model, version) of every version Triton reports READY in its repository index."""
        import tritonclient.grpc as grpcclient

        if self._health_client is None:
            self._health_client = grpcclient.InferenceServerClient(self.grpc_url)
        index = self._health_client.get_model_repository_index(client_timeout=5.0)
        return {(m.name, m.version) for m in index.models if m.state == "READY"}

    def _live_stubs(self) -> dict[StubKey, frozenset[int]]:
        """The live stub pids of every model instance, by (model, version, instance)."""
        assert self.process is not None
        live: dict[StubKey, set[int]] = collections.defaultdict(set)
        for stub in stub_processes(self.process.pid):
            if stub.alive and stub.serves_requests:
                live[(stub.model, stub.version, stub.instance)].add(stub.pid)
        return {key: frozenset(pids) for key, pids in live.items()}

    def _remember_stubs(self) -> None:
        self._stubs.update(self._live_stubs())

    def dead_stubs(self) -> list[tuple[str, str]]:
        """(model, instance) of every READY model version whose python stub process is gone.

        Triton keeps such a model READY and fails each of its requests, so this is the only signal. Stubs
        that Triton replaces on purpose are not deaths: a version it unloads or retires (``version_policy``)
        is no longer READY; a model it reloads (a changed config or labels file, an ensemble reloading its
        steps) gets new stubs, keyed by model, version and instance like the old ones, or, when the reload
        changed the instance count, at least one stub of that version with a pid never seen before.
        """
        live = self._live_stubs()
        ready = self._ready_versions()
        dead: set[tuple[str, str]] = set()
        for key in list(self._stubs):
            model, version, instance = key
            if (model, version) not in ready:  # unloaded or retired on purpose: its stubs exit with it
                del self._stubs[key]
            elif key not in live:
                reloaded = any(other[:2] == key[:2] and not pids <= self._stubs.get(other, frozenset())
                               for other, pids in live.items())
                if reloaded:
                    del self._stubs[key]
                else:
                    dead.add((model, instance))
        self._stubs.update(live)
        return sorted(dead)

    def is_healthy(self) -> bool:
        """Running, and every READY python-backend model has a live stub per instance: what a probe should ask."""
        try:
            self.check_alive()
            return not self.dead_stubs()
        except Exception:  # exited, or the index cannot be read: not healthy either way
            return False

    def supervise(self, notify: Callable[[str], None] = lambda message: None) -> None:
        """One supervision pass: raise if the server exited; reload models whose stubs died.

        A stub found dead twice in a row (so not one caught mid-reload) is reloaded in ``explicit`` mode; in
        ``none``/``poll`` mode Triton cannot reload a model by request, so ``StubUnhealthyError`` says which
        model is lost and the caller stops, for a supervisor to restart the server.
        """
        self.check_alive()
        try:
            dead = set(self.dead_stubs())
        except Exception:  # the index did not answer this time (busy, or mid-shutdown): judge on the next pass
            return
        confirmed, self._suspects = dead & self._suspects, dead - self._suspects
        if not confirmed:
            return
        lost: dict[str, list[str]] = collections.defaultdict(list)
        for model, instance in sorted(confirmed):
            lost[model].append(instance)
        if self.config.model_control != "explicit":
            every = ", ".join(i for names in lost.values() for i in names)
            raise StubUnhealthyError(
                f"the python-backend stub of {every} (model {', '.join(lost)}) died: Triton still says READY "
                f"but fails every request to it. In model control mode {self.config.model_control} it cannot be "
                "reloaded, so the server stops; restart `headserve serve` (or serve in model control mode "
                "explicit, which reloads such a model)")
        for model, instances in lost.items():
            notify(f"python-backend stub of {', '.join(instances)} died; reloading model {model}")
            self._reload(model)
            notify(f"model {model} reloaded")
        self._remember_stubs()

    def _reload(self, model: str) -> None:
        """Unload ``model``, then load it: new instances, new stubs. A plain load of an unchanged model (or one
        with its own config passed again) keeps the broken instance, so the model is unavailable for the
        reload's seconds; its requests were failing since the stub died anyway."""
        from tritonclient.utils import InferenceServerException

        try:
            self._health_client.unload_model(model, client_timeout=60.0)
            self._health_client.load_model(model, client_timeout=120.0)
        except InferenceServerException as exc:
            raise StubUnhealthyError(f"model {model} lost its python-backend stub and could not be reloaded "
                                     f"({exc.message()}); restart `headserve serve`") from exc

    def stop(self, timeout: float = 30.0) -> None:
        """Stop tritonserver gracefully (SIGINT: it drains in-flight requests), then anything left in its session."""
        proc = self.process
        if proc is None:
            return
        if self._health_client is not None:
            self._health_client.close()
            self._health_client = None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        _end_session(proc.pid)
        if self._pump is not None:
            self._pump.join(timeout=5.0)

    def __enter__(self) -> "LocalTriton":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe_inputs(specs: list[dict[str, Any]], batch: list[int]) -> list[Any] | None:
    """One request's inputs for a model's declared ``specs``: zero pixels, L2-normalised float rows (heads and
    prompt models refuse NaN, and a zero embedding has no direction); None for a model that takes bytes."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import triton_to_np_dtype

    inputs = []
    for spec in specs:
        kind = spec["data_type"].removeprefix("TYPE_")
        dtype = triton_to_np_dtype(kind)
        if dtype is None or np.dtype(dtype) == np.object_:
            return None
        shape = batch + [max(1, int(d)) for d in spec.get("dims", [])]
        array = np.full(shape, shape[-1] ** -0.5, dtype) if np.dtype(dtype).kind == "f" else np.zeros(shape, dtype)
        if spec["name"] == BOXES:  # a region encoder's boxes: one with area (a point pools nothing and is refused)
            array = np.array([[0.0, 0.0, 1.0, 1.0]], dtype).reshape(shape)
        tensor = grpcclient.InferInput(spec["name"], shape, kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _ports_text(ports: dict[str, int]) -> str:
    return ", ".join(f"{kind} {port}" for kind, port in ports.items())


def _end_session(session_id: int, grace_s: float = 5.0) -> None:
    """Wait briefly for the stubs of a stopped server to exit by themselves, then kill what is left.

    Stubs notice their server's end and exit; after a kill -9 of the server nobody tells them, and
    they would linger (holding shared memory) until the machine restarts.
    """
    deadline = time.monotonic() + grace_s
    while session_members(session_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    if session_members(session_id):
        try:
            os.killpg(session_id, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while session_members(session_id) and time.monotonic() < deadline:
            time.sleep(0.1)


class _LogPump(threading.Thread):
    """Copies tritonserver's output to the caller's stream (if any) and keeps its last lines for errors."""

    def __init__(self, source: IO[bytes], sink: IO[str] | None, keep: int = 400) -> None:
        super().__init__(name="tritonserver-log", daemon=True)
        self._source = source
        self._sink = sink
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def run(self) -> None:
        for raw in iter(self._source.readline, b""):
            line = raw.decode(errors="replace")
            with self._lock:
                self._lines.append(line.rstrip("\n"))
            if self._sink is not None:
                try:
                    self._sink.write(line)
                    self._sink.flush()
                except (OSError, ValueError):  # the caller closed its stream; keep draining the pipe
                    self._sink = None
        self._source.close()

    def tail(self, lines: int) -> list[str]:
        with self._lock:
            return list(self._lines)[-lines:]
