"""`headserve train`: a YOLO dataset in, a head artifact and its report out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headserve.cli_args import add_encoder_args, encoder_from_args, parse_hidden


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a calibrated head on a YOLO dataset")
    p.add_argument("dataset", type=Path, help="YOLO dataset root (images/, labels/, data.yaml)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--name", default="head", help="head name; becomes the served model name")
    add_encoder_args(p)
    p.add_argument("--hidden", type=parse_hidden, default=(256,), help="MLP widths, e.g. 768,384; 'logreg' for none")
    p.add_argument("--no-background", action="store_true", help="do not add a background class")
    p.add_argument("--strict", action="store_true", help="bad label lines are errors instead of skips")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from headserve.train.pipeline import TrainRequest, train_from_yolo

    req = TrainRequest(dataset=args.dataset, encoder=encoder_from_args(args), out=args.out, name=args.name,
                       hidden=args.hidden, background=not args.no_background, strict=args.strict)
    outcome = train_from_yolo(req)
    for line in outcome.report_lines:
        print(line)
    keep = ("macro_f1_fg", "weighted_f1_fg", "ece_before", "ece_after", "temperature")
    print(json.dumps({k: outcome.metrics[k] for k in keep}, indent=2))
    print(f"artifact: {outcome.artifact}")
    return 0
