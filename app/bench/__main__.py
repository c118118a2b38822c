"""`make bench` (``python -m headserve.app.bench``): every benchmark of the project, with the machine it ran on.

``--smoke`` (``make bench-smoke``) runs the same list on tiny twins with short runs: minutes, not tens of
minutes; it shows that every benchmark runs, and its numbers say nothing about real encoders.
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

# Every benchmark, in the order of results.md; "module" runs module.run(out, smoke), "module:function" that
# function. `make bench` and `make bench-smoke` both run all of them.
BENCHMARKS: tuple[str, ...] = (
    "headserve.app.bench.training",
    "headserve.app.bench.extraction",
    "headserve.app.bench.ray",
    "headserve.app.bench.ensemble",
    "headserve.app.bench.serving",
    "headserve.app.bench.engines",
    "headserve.app.bench.client",
    "headserve.app.bench.client:metrics",
    "headserve.app.bench.regions",
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
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="BENCHMARK",
                        help=f"run only these (repeat); one of {', '.join(BENCHMARKS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny twins and short runs: shows every benchmark runs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# headserve benchmarks" + (" (smoke: tiny twins, short runs)" if args.smoke else ""), "",
             f"- machine: {machine()}", f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- command: {' '.join(sys.argv)}", ""]
    for entry in args.only or BENCHMARKS:
        name, _, function = entry.partition(":")
        print(f"running {entry} ...", flush=True)
        t0 = time.perf_counter()
        lines += getattr(importlib.import_module(name), function or "run")(args.out, smoke=args.smoke)
        lines += [f"({entry}: {time.perf_counter() - t0:.0f} s)", ""]
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
