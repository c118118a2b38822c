"""`headserve serve` lives and dies honestly: the real tritonserver, driven as users drive it (a subprocess)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from support.twins import TINY_ENCODERS

from headserve.errors import PortInUseError
from headserve.processes import environment, session_members, stub_processes
from headserve.server import LocalTriton, ServerConfig, free_port

pytestmark = pytest.mark.integration
SECRET = "hf_not_for_the_stubs_0123456789"


class Serve:
    """`python -m headserve.app serve REPO` on free ports, with the tritonserver pid from its ready line."""

    def __init__(self, repo: Path, *args: str, grpc_port: int | None = None, env: dict | None = None) -> None:
        self.grpc_port = grpc_port or free_port()
        self.logs = tempfile.TemporaryDirectory(prefix="headserve-serve-")  # Triton's log, out of the worktree
        cmd = [sys.executable, "-m", "headserve.app", "serve", str(repo), "--grpc-port", str(self.grpc_port),
               "--http-port", str(free_port()), "--metrics-port", str(free_port()),
               "--log-file", f"{self.logs.name}/tritonserver.log", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or os.environ.copy())
        self.server_pid: int | None = None

    def wait_ready(self) -> int:
        line = self.proc.stdout.readline()
        assert "tritonserver ready" in line, line + self.proc.communicate(timeout=60)[1][-3000:]
        self.server_pid = int(line.split("(pid ")[1].split(";")[0])
        return self.server_pid

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _pixels(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def _infer(url: str, model: str, size: int) -> str:
    """"ok" or the server's error message for one request to ``model``."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        x = grpcclient.InferInput("pixels", [2, size, size, 3], "UINT8")
        x.set_data_from_numpy(_pixels(size))
        client.infer(model, [x], client_timeout=30)
        return "ok"
    except Exception as exc:
        return str(exc)
    finally:
        client.close()


def test_serve_on_a_port_another_tritonserver_answers_on_fails_naming_the_port(triton, local_repo):
    serve = Serve(local_repo, grpc_port=triton.grpc_port)
    try:
        code, out, err = serve.finish(timeout=120)
    finally:
        serve.kill()
    assert code == 2
    assert "tritonserver ready" not in out
    assert f"gRPC port {triton.grpc_port} on 127.0.0.1 is already in use" in err
    # The server that owns the port is untouched and still the one answering.
    assert triton.process.poll() is None and triton.is_healthy()


def test_a_listener_that_sneaks_onto_the_port_after_the_check_is_still_caught(two_family_repo, monkeypatch):
    """The race between the port check and tritonserver's own bind: another process takes the port in
    between. The check is skipped here (a mock, because that window cannot be hit on purpose); what
    must catch it is the second defence, which looks at who holds the listening sockets."""
    port = free_port()
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as gRPC servers do, so both can listen
    other.bind(("127.0.0.1", port))
    other.listen()
    monkeypatch.setattr(LocalTriton, "_check_ports_free", lambda self: None)
    try:
        with pytest.raises(PortInUseError, match=rf"\b{port}\b"):
            with LocalTriton(ServerConfig(repository=two_family_repo, grpc_port=port, startup_timeout_s=90)):
                pass
    finally:
        other.close()


def test_serve_exits_non_zero_with_the_last_log_lines_when_tritonserver_is_killed(local_repo):
    serve = Serve(local_repo)
    try:
        pid = serve.wait_ready()
        stubs = [s.pid for s in stub_processes(pid)]
        assert len(stubs) == 2 * len(TINY_ENCODERS)  # per family an encoder and a head, one python stub each
        os.kill(pid, signal.SIGKILL)
        code, _, err = serve.finish(timeout=60)
    finally:
        serve.kill()
    assert code == 2
    assert f"tritonserver (pid {pid}) was killed by SIGKILL while serving {local_repo}" in err
    tail = err.split("Its last log lines:", 1)[1]
    assert "Started GRPCInferenceService" in tail
    # Its stubs, orphaned by the kill, are gone too.
    assert _wait_for(lambda: session_members(pid) == [], 10), session_members(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_serve_drain_the_server_and_leave_no_process(local_repo, sig):
    serve = Serve(local_repo)
    try:
        pid = serve.wait_ready()
        members = session_members(pid)
        assert pid in members and len(members) == 1 + 2 * len(TINY_ENCODERS)  # tritonserver and its stubs
        serve.proc.send_signal(sig)
        code, out, err = serve.finish(timeout=90)
    finally:
        serve.kill()
    assert code == 0
    assert f"{sig.name}: stopping tritonserver, draining in-flight requests" in out
    log = Path(err.split("headserve serve: tritonserver's log: ", 1)[1].splitlines()[0])  # Triton's own output
    assert "Waiting for in-flight requests to complete" in log.read_text()  # Triton's graceful path, not a kill
    assert session_members(pid) == []


def test_the_server_and_its_stubs_get_only_allow_listed_environment_variables(local_repo):
    env = {**os.environ, "HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET, "LC_ALL": "C.UTF-8",
           "OMP_NUM_THREADS": "1"}
    serve = Serve(local_repo, env=env)
    try:
        pid = serve.wait_ready()
        stubs = stub_processes(pid)
        assert stubs
        for proc_env in [environment(pid)] + [environment(s.pid) for s in stubs]:
            assert SECRET not in proc_env.values()
            assert "HF_TOKEN" not in proc_env and "AWS_SECRET_ACCESS_KEY" not in proc_env
            assert proc_env["LC_ALL"] == "C.UTF-8" and proc_env["PATH"] and proc_env["PYTHONPATH"]
        # ... and still serve: the allow-list holds what the stubs need to run the models.
        serve_url = f"127.0.0.1:{serve.grpc_port}"
        assert _infer(serve_url, "t_clip_tiny", 32) == "ok"
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish()[0] == 0
    finally:
        serve.kill()


def test_a_killed_stub_is_reloaded_in_explicit_mode_so_requests_succeed_again(two_family_repo):
    serve = Serve(two_family_repo, "--model-control-mode", "explicit")
    url = f"127.0.0.1:{serve.grpc_port}"
    try:
        pid = serve.wait_ready()
        assert _infer(url, "t_clip_tiny", 32) == "ok"
        victim = next(s for s in stub_processes(pid) if s.model == "t_clip_tiny_head")
        os.kill(victim.pid, signal.SIGKILL)
        # Triton alone would fail every request from now on while still saying READY.
        assert _wait_for(lambda: any(s.model == "t_clip_tiny_head" and s.pid != victim.pid and s.alive
                                     for s in stub_processes(pid)), 30)
        assert _wait_for(lambda: _infer(url, "t_clip_tiny", 32) == "ok", 30)
        assert _infer(url, "t_dinov3_tiny", 32) == "ok"  # the other head never stopped
        serve.proc.send_signal(signal.SIGINT)
        code, _, err = serve.finish()
    finally:
        serve.kill()
    assert code == 0
    assert "python-backend stub of t_clip_tiny_head_0_0 died; reloading model t_clip_tiny_head" in err
    assert "model t_clip_tiny_head reloaded" in err


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_a_killed_stub_without_explicit_mode_stops_serve_naming_the_model(two_family_repo, mode):
    serve = Serve(two_family_repo, "--model-control-mode", mode)
    try:
        pid = serve.wait_ready()
        victim = next(s for s in stub_processes(pid) if s.model == "t_dinov3_tiny_head")
        os.kill(victim.pid, signal.SIGKILL)
        code, _, err = serve.finish(timeout=90)
    finally:
        serve.kill()
    assert code == 2
    assert ("the python-backend stub of t_dinov3_tiny_head_0_0 (model t_dinov3_tiny_head) died: Triton still says "
            "READY but fails every request to it") in err
    assert session_members(pid) == []


def test_local_triton_reports_unhealthy_while_triton_says_ready_after_a_stub_dies(two_family_repo):
    with LocalTriton(ServerConfig(repository=two_family_repo)) as server:
        assert server.is_healthy() and server.dead_stubs() == []
        victim = next(s for s in stub_processes(server.process.pid) if s.model == "encoder_clip_tiny")
        os.kill(victim.pid, signal.SIGKILL)
        assert _wait_for(lambda: not server.is_healthy(), 10)
        assert server.dead_stubs() == [("encoder_clip_tiny", victim.instance)]
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:  # what Triton itself says meanwhile: ready, yet the request fails
            assert client.is_server_ready() and client.is_model_ready("encoder_clip_tiny")
        finally:
            client.close()
        assert "is not healthy" in _infer(server.grpc_url, "t_clip_tiny", 32)


# A python-backend model that loads (Triton says READY) and answers every request with an empty tensor, as
# stubs running with a numpy the backend does not support do: a real model producing the real fault.
EMPTY_ANSWER_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("probs", np.zeros((0,), np.float32))])
                for _ in requests]
'''
EMPTY_ANSWER_CONFIG = '''name: "hollow"
backend: "python"
max_batch_size: 8
input { name: "pixels" data_type: TYPE_UINT8 dims: [ 4, 4, 3 ] }
output { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] }
instance_group { kind: KIND_CPU count: 1 }
'''


def test_serve_is_not_ready_while_a_ready_model_answers_empty_tensors_and_names_it(two_family_repo, tmp_path):
    repo = shutil.copytree(two_family_repo, tmp_path / "repo")
    (repo / "hollow" / "1").mkdir(parents=True)
    (repo / "hollow" / "1" / "model.py").write_text(EMPTY_ANSWER_MODEL)
    (repo / "hollow" / "config.pbtxt").write_text(EMPTY_ANSWER_CONFIG)
    serve = Serve(repo)
    try:
        code, out, err = serve.finish(timeout=180)
    finally:
        serve.kill()
    assert code == 2 and "tritonserver ready" not in out
    assert ("model hollow (version 1) is READY but answered 'probs' with shape [0] where its config declares [1, 3]: "
            "it cannot serve") in err
    assert "numpy" in err.splitlines()[-1] and "Traceback" not in err
