"""`headserve classify`: crops in, one JSON object per crop out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify image crops with a served head (JSON Lines out)")
    p.add_argument("images", nargs="+", type=Path, help="crop image files")
    p.add_argument("--head", required=True, help="head (ensemble) name on the server")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address")
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(func=_classify)


def _classify(args: argparse.Namespace) -> int:
    from headserve.client import HeadClient

    with HeadClient(args.url) as client:
        for path, pred in zip(args.images, client.classify(args.head, [str(p) for p in args.images], args.top_k)):
            row = {"image": str(path), "label": pred.label, "confidence": round(pred.confidence, 6),
                   "top_k": [[c, round(p, 6)] for c, p in pred.top_k]}
            sys.stdout.write(json.dumps(row) + "\n")
    return 0
