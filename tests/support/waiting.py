"""Deadlines for the tests' waits, so a stuck server fails a test instead of hanging CI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

CALL_TIMEOUT_S = 60.0  # per raw infer call (tritonclient's client_timeout): far above a tiny model's answer
WAIT_TIMEOUT_S = 120.0  # per wait for the server to reach a state (a version loaded, answers counted)


def wait_until(done: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = 0.05) -> None:
    """Poll ``done`` until it holds; fail the test saying ``what`` was awaited once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)


def join(thread: threading.Thread, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    """``thread.join`` with a deadline: a thread blocked on a stuck call fails the test."""
    thread.join(timeout=timeout_s)
    if thread.is_alive():
        pytest.fail(f"thread {thread.name} did not finish within {timeout_s:.0f} s")
