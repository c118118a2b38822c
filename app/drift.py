"""`headserve drift` and `headserve report`: a head's production window against what training saw.

``drift`` is for a cron job or CI: it compares a window of served answers (the JSON Lines that
``headserve classify --output`` writes) with the reference the head's artifact keeps, writes the report,
prints one line per check and exits 1 when any check fails. ``report`` is for a person: the same report
(training metrics, reliability diagram, and the window side by side when one is given), exit 0.
Neither imports torch: both run where the client runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headserve.drift import DriftThresholds

EXIT_DRIFTED = 1  # a window that failed a check; 2 stays "bad input", as for every command


def _window_args(p: argparse.ArgumentParser, fails: str) -> None:
    """The thresholds a window is held against; ``fails`` says what a check beyond one does in this command."""
    from headserve.drift import DriftThresholds

    d = DriftThresholds()
    p.add_argument("--class-psi", type=float, default=d.class_psi,
                   help=f"{fails} when the top-1 class mix's PSI exceeds this (default {d.class_psi})")
    p.add_argument("--confidence-psi", type=float, default=d.confidence_psi,
                   help=f"{fails} when the confidence histogram's PSI exceeds this (default {d.confidence_psi})")
    p.add_argument("--p-value", type=float, default=d.ood_rate_p_value,
                   help=f"{fails} for the OOD-rate and OOD-score tests below this p-value (default "
                        f"{d.ood_rate_p_value})")
    p.add_argument("--min-window", type=int, default=d.min_window,
                   help=f"refuse windows of fewer decided crops (default {d.min_window})")
    p.add_argument("--version", default=None, metavar="N",
                   help="compare only the rows head version N answered (the served version of HEAD's artifact); "
                        "needed when the window spans a hot swap")


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("drift", help="compare a window of served answers with the head's training reference; "
                                     "exit 1 when it drifted")
    d.add_argument("head", type=Path, help="the head's artifact directory (what `headserve train` wrote)")
    d.add_argument("window", type=Path, help="JSON Lines of served answers (`headserve classify --output`)")
    d.add_argument("--out", type=Path, required=True, help="report directory to write (drift.md, drift.json, drift.png)")
    _window_args(d, "fail (exit 1)")
    d.set_defaults(func=_drift)
    r = sub.add_parser("report", help="a head's training metrics and reliability, beside a production window",
                       description="Write a head's training metrics and reliability diagram, beside a production "
                                   "window when one is given, for a person to read; always exits 0 (for a verdict "
                                   "that fails, use `headserve drift`).")
    r.add_argument("head", type=Path, help="the head's artifact directory")
    r.add_argument("--window", type=Path, default=None, help="JSON Lines of served answers to show beside training")
    r.add_argument("--out", type=Path, required=True,
                   help="report directory to write: drift.md, drift.json and drift.png with --window; training.md, "
                        "training.json and training.png without one")
    _window_args(r, "with --window: mark DRIFT in the report")
    r.set_defaults(func=_report)


def _thresholds(args: argparse.Namespace) -> DriftThresholds:
    from headserve.drift import DriftThresholds

    return DriftThresholds(class_psi=args.class_psi, confidence_psi=args.confidence_psi,
                           ood_rate_p_value=args.p_value, ks_p_value=args.p_value, min_window=args.min_window)


def _write(args: argparse.Namespace, window: Path | None) -> bool | None:
    """Write the report; True/False: the window drifted or not; None: no window was compared."""
    from headserve.artifact import load_meta
    from headserve.drift import compare, read_window, reference_of
    from headserve.drift_report import VERDICTS, summary_of, write_drift_report

    thresholds = _thresholds(args)
    meta = load_meta(args.head)
    reference = reference_of(meta)
    served = read_window(window, args.version) if window is not None else None
    result = compare(reference, served, thresholds) if served is not None else None
    path = write_drift_report(args.out, result, reference, summary_of(meta))
    if served is not None:
        print(f"window: {len(served)} decided crops of head version "
              f"{', '.join(served.versions) or 'unknown (not recorded)'}")
    for check in result.checks if result is not None else ():
        print(f"{check.name}: {VERDICTS[check.passed]} ({check.detail})")
    for note in result.notes if result is not None else ():
        print(f"note: {note}")
    print(f"report: {path}")
    return None if result is None else result.drifted


def _drift(args: argparse.Namespace) -> int:
    drifted = _write(args, args.window)
    print(f"head {args.head}: {'DRIFT' if drifted else 'no drift'}")
    return EXIT_DRIFTED if drifted else 0


def _report(args: argparse.Namespace) -> int:
    _write(args, args.window)
    return 0
