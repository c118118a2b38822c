"""`headserve soak` as a user runs it (`make soak`): a bounded load on the real tritonserver that stops by itself
and says what it did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_soak_command_sends_its_request_budget_with_no_error_and_reads_the_servers_memory():
    script = Path(sys.executable).with_name("headserve")
    done = subprocess.run([str(script), "soak", "--clients", "3", "--requests", "30", "--seconds", "120"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    said = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert said["soak"].startswith("3 clients, 2 heads, 4 crops per request, ")
    assert re.fullmatch(r"30 \(\d+/s\)", said["requests"]), said["requests"]  # the total, not the time, stopped it
    assert said["errors"] == "0"
    latency = re.fullmatch(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms", said["latency per request"])
    assert latency and 0 < float(latency[1]) <= float(latency[2])
    rss = re.fullmatch(r"start (\d+) MiB, end (\d+) MiB", said["server RSS (tritonserver + stubs)"])
    assert rss and int(rss[1]) > 50 and int(rss[2]) > 50  # tritonserver and two python stubs at least
    assert said["server and every stub alive at the end"] == "yes"
