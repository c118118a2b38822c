"""Argument helpers shared by subcommands (parsing only; no heavy imports)."""

from __future__ import annotations

import argparse


def add_encoder_args(p: argparse.ArgumentParser, default: str = "clip:tiny") -> None:
    p.add_argument("--encoder", default=default,
                   help=f"registry name, e.g. clip:ViT-B-32 or dinov3:vitb16 (default {default}, an untrained twin)")
    p.add_argument("--encoder-weights", default=None, metavar="PATH",
                   help="local DINOv3 weights directory or CLIP checkpoint file instead of the hub")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device, --precision and --workers: where and how crops are embedded (and heads trained)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto|cpu|cuda|cuda:N|mps for embedding and head training (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", dest="embed_precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="encoder precision while embedding; bf16/fp16 are checked against fp32 on a sample first "
                        "and refused beyond tolerance")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="image decoding threads feeding the encoder (default 0: this machine's cores)")


def embed_config_from_args(args: argparse.Namespace):
    from headserve.train.embed import EmbedConfig

    if args.workers < 0:
        from headserve.errors import HeadserveError

        raise HeadserveError(f"--workers {args.workers}: must be 0 (this machine's cores) or more")
    return EmbedConfig(device=args.device, precision=args.embed_precision, workers=args.workers)


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
