"""`headserve embed`: a dataset's crops through one encoder into an embeddings store, built-in or on Ray Data."""

from __future__ import annotations

import argparse
from pathlib import Path

from headserve.app.arguments import add_device_args, add_encoder_args, embed_config_from_args, encoder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a YOLO dataset's crops into an embeddings store that train and sweep "
                                     "read without touching an image (built-in, or on Ray Data with --ray)")
    p.add_argument("dataset", type=Path, help="YOLO dataset root (images/, labels/, data.yaml)")
    p.add_argument("--out", type=Path, required=True, metavar="EMB",
                   help="store directory to write (Parquet shards and manifest.json); an interrupted run's store is "
                        "finished, computing only the shards that are missing")
    add_encoder_args(p)
    add_device_args(p)
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: decoding as Ray tasks, the encoder in an actor pool (a GPU per actor where "
                        "the cluster has GPUs); ADDRESS of a running cluster (ray://host:10001 or host:6379), or "
                        "none for RAY_ADDRESS, else a local Ray on this machine")
    p.add_argument("--actors", type=int, default=0, metavar="N",
                   help="with --ray: encoder actors at most (default 0: one per GPU, or one per CPU but one)")
    p.add_argument("--shard-rows", type=int, default=1024, metavar="N",
                   help="crops per shard at most, whole images per shard: the unit of work, retry and resume "
                        "(default 1024)")
    p.add_argument("--bg-per-image", type=int, default=2, metavar="N",
                   help="background crops per image, drawn as train draws them (default 2; 0 for none)")
    p.add_argument("--strict", action="store_true", help="bad label lines are errors instead of skips")
    p.add_argument("--reject-outside", action="store_true",
                   help="skip label lines with coordinates outside [0, 1] instead of clipping them")
    p.set_defaults(func=_embed)


def _embed(args: argparse.Namespace) -> int:
    from headserve.train.store import EmbedRequest, embed_dataset

    req = EmbedRequest(dataset=args.dataset, encoder=encoder_from_args(args), out=args.out,
                       embed=embed_config_from_args(args), ray=args.ray, shard_rows=args.shard_rows,
                       bg_per_image=args.bg_per_image, background=args.bg_per_image > 0, strict=args.strict,
                       reject_outside=args.reject_outside, progress=args.ray is None, actors=args.actors)
    outcome = embed_dataset(req)
    for line in outcome.lines:
        print(line)
    return 0
