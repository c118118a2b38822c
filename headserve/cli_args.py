"""Argument helpers shared by subcommands (parsing only; no heavy imports)."""

from __future__ import annotations

import argparse


def add_encoder_args(p: argparse.ArgumentParser, default: str = "clip:tiny") -> None:
    p.add_argument("--encoder", default=default,
                   help=f"registry name, e.g. clip:ViT-B-32 or dinov3:vitb16 (default {default}, an untrained twin)")
    p.add_argument("--encoder-weights", default=None, metavar="PATH",
                   help="local DINOv3 weights directory or CLIP checkpoint file instead of the hub")


def encoder_from_args(args: argparse.Namespace):
    from headserve.encoders import get_encoder

    spec = get_encoder(args.encoder)
    return spec.with_weights(args.encoder_weights) if args.encoder_weights else spec


def parse_hidden(text: str) -> tuple[int, ...]:
    """"768,384" -> (768, 384); "" or "none" -> () (logistic regression)."""
    if text.strip().lower() in ("", "none", "logreg"):
        return ()
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden sizes {text!r} must be comma-separated integers, e.g. 768,384")
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes {text!r} must be positive")
    return sizes
