"""`make bench` (``python -m headserve.app.bench``): every benchmark of the project, with the machine it ran on.

Each area keeps its benchmark next to its code (``headserve.<area>.bench``) with a function
``run(out: Path) -> list[str]`` that measures and returns Markdown lines. Numbers are reported, never
asserted: the suite's tests check behaviour, this checks speed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# "module" runs module.run(out); "module:function" runs that function instead.
BENCH_MODULES: tuple[str, ...] = (
    "headserve.train.bench",
    "headserve.train.bench_scale",
    "headserve.export.bench_scale",
    "headserve.export.bench_engine",
    "headserve.client.bench",
    "headserve.client.bench:metrics",
)
# `make bench-smoke`: tiny twins and short runs, minutes not tens of minutes; checks that every benchmark
# runs, and its serving numbers say nothing about real encoders.
SMOKE_MODULES: tuple[str, ...] = (
    "headserve.export.bench",
    "headserve.train.bench_scale:smoke",
    "headserve.export.bench_scale:smoke",
    "headserve.export.bench_engine:smoke",
)


def machine() -> str:
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headserve.app.bench")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--only", action="append", help="run only these modules (e.g. headserve.client.bench)")
    parser.add_argument("--smoke", action="store_true", help="tiny twins and short runs (SMOKE_MODULES)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# headserve benchmarks", "", f"- machine: {machine()}",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", f"- command: {' '.join(sys.argv)}", ""]
    for entry in args.only or (SMOKE_MODULES if args.smoke else BENCH_MODULES):
        name, _, function = entry.partition(":")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        print(f"running {entry} ...", flush=True)
        t0 = time.perf_counter()
        lines += getattr(module, function or "run")(args.out) + [f"({entry}: {time.perf_counter() - t0:.0f} s)", ""]
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
