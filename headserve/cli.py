"""The `headserve` console script: argument parsing only; each subcommand lives with its package.

A subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
handler taking the parsed namespace. Errors that headserve raises on purpose print as one line
(no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from headserve.errors import HeadserveError

# Order is the order of `headserve --help`. Modules import lazily so `classify` never loads torch.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "headserve.demo",
    "headserve.train.cli",
    "headserve.export.cli",
    "headserve.server",
    "headserve.client.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headserve",
        description="Train calibrated classifier heads on frozen CLIP and DINOv3 encoders and serve them with Triton.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HeadserveError as exc:
        print(f"headserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"headserve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
