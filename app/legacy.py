"""`headserve import-legacy`: a scikit-learn pickle head becomes a pickle-free artifact and, with --repo, a served head.

One command for both steps: converting is what every caller wants, exporting only those who name a
repository. Unpickling runs code from the file, so nothing is read without --trust-pickle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headserve.app.arguments import add_encoder_args
from headserve.app.export import add_repo_args, add_server_arg, production_options, report_written


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("import-legacy", help="convert a scikit-learn .pkl head (+ .meta.pkl) into an artifact, "
                                             "and with --repo export it")
    g.add_argument("pkl", type=Path, help="legacy head NAME.pkl; NAME.meta.pkl must sit beside it")
    g.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    g.add_argument("--trust-pickle", action="store_true",
                   help="required: unpickling runs code from the file; only for files you made or trust")
    add_repo_args(g, required=False)
    add_encoder_args(g, default="")
    add_server_arg(g)
    g.set_defaults(func=_import_legacy)


def _import_legacy(args: argparse.Namespace) -> int:
    from headserve.train.legacy import TRUST_NOTICE, import_legacy

    options = production_options(args)  # a bad count is refused before the pickle is read
    if args.trust_pickle:
        print(f"note: {TRUST_NOTICE}")
    artifact = import_legacy(args.pkl, args.out, trust_pickle=args.trust_pickle)
    print(f"artifact: {artifact}")
    if args.repo is not None:
        from headserve.export.pipeline import export_head

        report_written(export_head(artifact, args.repo, args.runtime, encoder_name=args.encoder or None,
                                   encoder_weights=args.encoder_weights, options=options,
                                   precision=args.precision, engine=args.engine, log=print), args.server)
    return 0
