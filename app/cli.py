"""The `headserve` console script: argument parsing only; each group of commands has its module in headserve.app.

A command module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` to a handler
taking the parsed namespace; the handler turns flags into the library's typed configs. Every error the
library raises on purpose (``HeadserveError``, which covers the configs' own validation) prints as one
line naming the bad value, with the flag that set it, and exits with status 2: no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings
from typing import Any, Sequence

from headserve.app.arguments import CommandParser, flag_for
from headserve.errors import HeadserveError, HeadserveWarning

# Order is the order of `headserve --help`. Modules import lazily so `classify` never loads torch.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "headserve.app.demo",
    "headserve.app.train",
    "headserve.app.embed",
    "headserve.app.legacy",
    "headserve.app.export",
    "headserve.app.serve",
    "headserve.app.soak",
    "headserve.app.classify",
    "headserve.app.drift",
)
# How a library message names a config field besides the bad setting: `field`, in backticks.
FIELD_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`")
EXIT_BAD_INPUT = 2  # what argparse returns for a bad flag; every refused value exits the same way
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headserve",
        description="Train calibrated classifier heads on frozen CLIP and DINOv3 encoders and serve them with Triton.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def error_line(exc: HeadserveError) -> str:
    """The error as the command line says it: each config field it names spelled as the flag that sets it.

    The library names the bad setting in ``exc.setting`` and writes any other field it mentions in
    backticks (``use `device` cpu``); a field no single flag sets keeps the library's spelling.
    """
    flag = flag_for(exc.setting) if exc.setting is not None else None
    line = exc.spelled(flag) if flag else str(exc)
    return FIELD_MENTION.sub(lambda m: flag_for(m.group(1)) or m.group(0), line)


def _warning_lines(command: str) -> Any:
    """``warnings.showwarning`` that prints headserve's own warnings as one line; others as Python does."""
    default = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, HeadserveWarning):
            print(f"headserve {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_lines(args.command)
            return int(args.func(args) or 0)
    except HeadserveError as exc:
        print(f"headserve {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"headserve {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
