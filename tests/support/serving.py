"""`headserve serve` as a process for the tests that drive what users run (serve, export, repo, status)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path


def headserve_argv(*argv: str) -> list[str]:
    """The console script's command line, run by this interpreter (the test's venv)."""
    return [sys.executable, "-m", "headserve.app", *argv]


class Served:
    """`headserve serve REPO` as a process on free ports; its stderr (Triton's log and supervision) to a file."""

    def __init__(self, repo: Path, mode: str | None, log: Path, env: dict[str, str] | None = None) -> None:
        from headserve.server import free_ports

        self.grpc_port, http, metrics = free_ports(3)
        self.log_path = log
        self.triton_log_path = log.with_name(f"{log.stem}.tritonserver.log")
        self._log = open(log, "w")
        chosen = ("--model-control-mode", mode) if mode else ()  # None: serve's default
        self.proc = subprocess.Popen(
            headserve_argv("serve", str(repo), *chosen, "--grpc-port", str(self.grpc_port),
                       "--http-port", str(http), "--metrics-port", str(metrics), "--log-file",
                       str(self.triton_log_path)),
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        line = self.proc.stdout.readline()  # the ready line, or "" when serve exits first
        assert "tritonserver ready" in line, f"serve did not start: {line!r}\n{self.log()[-3000:]}"
        self.says = self.proc.stdout.readline()  # what an export into the repository will do

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """What `serve` itself printed to stderr, then tritonserver's own log."""
        return self.log_path.read_text(errors="replace") + self.triton_log()

    def triton_log(self) -> str:
        return self.triton_log_path.read_text(errors="replace") if self.triton_log_path.exists() else ""

    def loads(self) -> int:
        """How many model loads Triton has logged so far (each `loading: MODEL:VERSION` line)."""
        return len(re.findall(r'"loading: ', self.triton_log()))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=90)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self._log.close()
        return code
