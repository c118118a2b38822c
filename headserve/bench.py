"""`make bench`: every benchmark of the project, with the machine it ran on.

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
from datetime import datetime, timezone
from pathlib import Path

BENCH_MODULES: tuple[str, ...] = (
    "headserve.train.bench",
    "headserve.export.bench",
    "headserve.client.bench",
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
    parser = argparse.ArgumentParser(prog="python -m headserve.bench")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--only", action="append", help="run only these modules (e.g. headserve.client.bench)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# headserve benchmarks", "", f"- machine: {machine()}",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", f"- command: {' '.join(sys.argv)}", ""]
    for name in args.only or BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        print(f"running {name} ...", flush=True)
        lines += module.run(args.out) + [""]
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
