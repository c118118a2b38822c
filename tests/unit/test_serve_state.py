"""The state file a running `headserve serve` leaves in its repository, and what `export` does with it.

The process-level path (a real `serve`, then `export head` loading the new version there) is
tests/integration/test_serve_hot_swap.py. Here the other modes and the stale cases, without a server start:
a real process whose command line reads `headserve serve` stands in for one, since in those cases export
must not contact a server at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from headserve.app.export import report_written
from headserve.server import SERVE_STATE, ServeState


@pytest.fixture()
def serve_lookalike():
    """A live process whose argv is `python -c ... headserve serve`, as `python -m headserve.app serve` reads."""
    from headserve.processes import command_line

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "headserve", "serve"])
    try:
        deadline = time.monotonic() + 10  # /proc/PID/cmdline can read empty for a moment after the exec
        while not command_line(proc.pid):
            assert time.monotonic() < deadline, "the stand-in process never showed its command line"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _state(pid: int, mode: str) -> ServeState:
    return ServeState(grpc_url="127.0.0.1:1", pid=pid, model_control=mode, poll_secs=2)


class Written:
    """What export reports having written (the fields report_written reads)."""

    name, version, path, max_abs_diff = "pets", "2", Path("pets/2"), None


def test_a_serve_state_is_read_back_while_its_serve_runs_and_ignored_once_it_has_exited(tmp_path, serve_lookalike):
    state = _state(serve_lookalike, "explicit")
    assert state.write(tmp_path) == tmp_path / SERVE_STATE
    assert ServeState.read(tmp_path) == state
    assert list(tmp_path.iterdir()) == [tmp_path / SERVE_STATE]  # written through a temp file, none left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _state(int(dead.stdout), "explicit").write(tmp_path)  # a serve killed before it could remove its file
    assert ServeState.read(tmp_path) is None
    _state(os.getpid(), "explicit").write(tmp_path)  # a pid now running something else (this test)
    assert ServeState.read(tmp_path) is None
    (tmp_path / SERVE_STATE).write_text("{not json")
    assert ServeState.read(tmp_path) is None


def test_a_serve_removes_only_its_own_state_file(tmp_path, serve_lookalike):
    ours = _state(serve_lookalike, "explicit")
    later = replace(ours, grpc_url="127.0.0.1:2")  # another serve started on the repository since
    later.write(tmp_path)
    ours.remove(tmp_path)
    assert ServeState.read(tmp_path) == later
    later.remove(tmp_path)
    assert not (tmp_path / SERVE_STATE).exists()


def test_export_into_a_repository_served_in_mode_none_warns_in_one_line_naming_the_fix(tmp_path, capsys,
                                                                                        serve_lookalike):
    _state(serve_lookalike, "none").write(tmp_path)
    report_written([Written()], None, tmp_path)
    out, err = capsys.readouterr()
    assert out == "pets version 2: pets/2\n"
    assert err.count("\n") == 1
    assert f"`headserve serve` (pid {serve_lookalike}, gRPC 127.0.0.1:1) serves {tmp_path} in model control mode " \
           "none, so it keeps answering with the old versions" in err
    assert "--model-control-mode explicit" in err


def test_export_into_a_repository_served_in_poll_mode_says_when_the_server_picks_it_up(tmp_path, capsys,
                                                                                     serve_lookalike):
    _state(serve_lookalike, "poll").write(tmp_path)
    report_written([Written()], None, tmp_path)
    assert "in poll mode: it loads the new versions within 2s" in capsys.readouterr().out


def test_gpus_are_counted_from_the_driver_device_nodes_narrowed_by_cuda_visible_devices(tmp_path):
    from headserve.server import visible_gpus

    assert visible_gpus({}, tmp_path) == 0  # a machine without the NVIDIA driver: serve says it runs on CPU
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({}, tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == 0
