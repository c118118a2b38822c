"""The benchmarks' and the soak's shared load driver and timers: loads are bounded, counted and loud on failure.

The clients here are plain objects: what is under test is the driver's threading and bookkeeping, which a
served model would only make slower.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import threading
import time

import pytest

import headserve.app.bench
from headserve.app.bench.__main__ import BENCHMARKS
from headserve.app.bench.timing import Load, Measured, interleaved_rounds, run_load, spread


class _Refused(Exception):
    pass


def _client(index: int):
    return contextlib.nullcontext(index)


def test_a_load_sends_the_requests_of_every_client_and_times_each_call():
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def call(client: int, turn: int) -> None:
        with lock:
            calls.append((client, turn))
        time.sleep(0.002)

    load = run_load(3, _client, call, items_per_call=4, requests=5)
    assert load.calls == 15 and load.items == 60 and len(load.latencies_s) == 15
    assert sorted(calls) == [(c, c + n) for c in range(3) for n in range(5)]  # turn: worker index + calls before
    assert min(load.latencies_s) >= 0.002 and load.rate == pytest.approx(60 / load.wall_s)
    assert load.errors == {} and load.probe is None


def test_a_load_with_a_time_budget_stops_by_itself_and_a_total_caps_the_calls():
    t0 = time.monotonic()
    timed = run_load(2, _client, lambda client, turn: time.sleep(0.001), seconds=0.2)
    assert 0.2 <= time.monotonic() - t0 < 5 and timed.calls > 2
    capped = run_load(4, _client, lambda client, turn: None, seconds=30, total=7)
    assert capped.calls == 7


def test_a_failed_call_is_raised_after_every_thread_stopped_unless_the_caller_counts_failures():
    def call(client: int, turn: int) -> None:
        if turn % 2:
            raise _Refused(f"turn {turn}")

    with pytest.raises(_Refused, match=r"turn \d+"):
        run_load(2, _client, call, requests=4)
    counted = run_load(2, _client, call, requests=4, count_errors=True)
    assert counted.calls == 8 and counted.errors == {"_Refused": 4} and len(counted.latencies_s) == 4
    assert counted.items == 4


def test_a_client_that_fails_before_the_start_line_fails_the_load_instead_of_leaving_the_others_waiting():
    def warm(client: int) -> None:
        if client == 1:
            raise _Refused("client 1 could not connect")

    t0 = time.monotonic()
    with pytest.raises(_Refused, match="client 1 could not connect"):
        run_load(3, _client, lambda client, turn: None, requests=2, warm=warm)
    assert time.monotonic() - t0 < 10


def test_the_probe_is_read_at_the_start_line_and_at_the_end_and_gives_a_rate():
    readings = iter([10.0, 11.0])
    load = run_load(1, _client, lambda client, turn: time.sleep(0.05), requests=2, probe=lambda: next(readings))
    assert load.probe == (10.0, 11.0)
    assert load.probe_per_s == pytest.approx(1.0 / load.wall_s)


def test_the_clock_starts_before_any_call_however_long_the_probe_takes_to_read():
    readings = iter([0.0, 1.0])

    def slow_probe() -> float:
        time.sleep(0.2)  # reading /proc for a whole server session takes milliseconds; a small call takes less
        return next(readings)

    load = run_load(1, _client, lambda client, turn: time.sleep(0.05), requests=2, probe=slow_probe)
    assert load.wall_s >= sum(load.latencies_s) >= 0.1


def test_interleaved_rounds_run_every_side_once_per_round_in_order_and_keep_each_sample():
    order: list[str] = []
    load = Load(calls=2, items=8, wall_s=2.0, latencies_s=[0.5, 0.25], errors={}, probe=(1.0, 4.0))

    def side(name: str, value):
        return lambda: order.append(name) or value

    results = interleaved_rounds(2, {"a": side("a", 3.0), "b": side("b", load)})
    assert order == ["a", "b", "a", "b"]
    assert results["a"].rates == [3.0, 3.0]
    assert results["b"].rates == [4.0, 4.0] and results["b"].latencies_ms == [500.0, 250.0] * 2
    assert results["b"].cores == [1.5, 1.5]


def test_a_spread_shows_the_median_and_the_range_and_a_single_sample_alone():
    assert spread([3.0, 1.0, 2.0]) == "2.0 [1.0, 3.0]"
    assert spread([0.0021, 0.0011, 0.0031], 1e3, 3) == "2.100 [1.100, 3.100]"
    assert spread([5.0]) == "5.0" and spread([]) == "-"
    assert Measured(rates=[1.0, 4.0, 2.0]).cell() == "2.0 [1.0, 4.0]" and Measured().cell() == "-"


def test_every_benchmark_module_is_in_the_list_that_make_bench_and_bench_smoke_run():
    shared = {"timing", "repository", "__main__"}
    modules = {m.name for m in pkgutil.iter_modules(headserve.app.bench.__path__)} - shared
    listed = {entry.partition(":")[0].rsplit(".", 1)[1] for entry in BENCHMARKS}
    assert modules == listed
    for entry in BENCHMARKS:
        name, _, function = entry.partition(":")
        run = getattr(importlib.import_module(name), function or "run")
        assert "smoke" in run.__code__.co_varnames[:run.__code__.co_argcount], entry
