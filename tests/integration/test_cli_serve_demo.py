"""The console script's long-running commands: `serve` until Ctrl-C, and the offline `demo`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until

from headserve.server import free_port

pytestmark = pytest.mark.integration


def _headserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "headserve.app", *args]


def test_serve_answers_until_ctrl_c_then_exits_cleanly(two_family_repo, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    port = free_port()
    proc = subprocess.Popen(_headserve("serve", str(two_family_repo), "--grpc-port", str(port), "--http-port",
                                       str(free_port()), "--metrics-port", str(free_port()),
                                       "--log-file", str(tmp_path / "tritonserver.log")),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # printed once the server is ready
        assert "tritonserver ready" in line, line
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # The server process group is gone: nothing listens on the port any more, and a client is told so.
    wait_until(lambda: not _listening(port), f"port {port} to close after Ctrl-C", timeout_s=30)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        client.is_server_live(client_timeout=2)
    client.close()


def _listening(port: int) -> bool:
    """Whether something accepts connections on loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:  # refused (nothing listens) or timed out
        return False
    return True


def test_demo_runs_offline_and_reports_served_probabilities_equal_to_pytorch(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(_headserve("demo", "--out", str(out), "--images", "60"), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "=== headserve demo report ===" in done.stdout
    assert "untrained tiny twin" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert {r["encoder"] for r in report} == {"clip:tiny", "dinov3:tiny"}
    for row in report:
        # The demo trains the `full` profile, whose embedding standardisation divides by per-dimension
        # stds near 0.03: float32 ONNX-vs-PyTorch encoder noise (~1e-7) reaches ~1e-5 in probabilities.
        # The strict 1e-5 parity is test_served_ensemble's, on heads without standardisation.
        assert row["max_abs_diff_served_vs_torch"] <= 5e-5
        # Served over gRPC, the test split scores what the same head scored in process at training time
        # (meta.json's metrics, computed with the PyTorch encoder on the same crops).
        trained = json.loads(Path(row["artifact"], "meta.json").read_text())["metrics"]
        assert row["n_test"] == trained["n_test"] > 0
        assert row["served_macro_f1_fg"] == pytest.approx(trained["macro_f1_fg"], abs=1e-9)
    assert (out / "model_repository").is_dir()
