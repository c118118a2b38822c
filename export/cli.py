"""`headserve export encoder|head`: write models into a Triton repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from headserve.cli_args import add_encoder_args, encoder_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export encoders and heads into a Triton model repository")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    enc = what.add_parser("encoder", help="export an encoder (preprocessing in the graph)")
    enc.add_argument("name", help="encoder registry name, e.g. clip:ViT-B-32")
    enc.add_argument("--encoder-weights", default=None, metavar="PATH")
    _repo_args(enc)
    enc.set_defaults(func=_export_encoder, encoder=None)

    head = what.add_parser("head", help="export a head artifact and its ensemble (and its encoder if missing)")
    head.add_argument("artifact", type=Path, help="directory with meta.json and head.safetensors")
    _repo_args(head)
    add_encoder_args(head, default="")
    head.set_defaults(func=_export_head)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", type=Path, required=True, help="model repository directory")
    p.add_argument("--runtime", choices=("local", "production"), default="local",
                   help="local: python backend + ONNX Runtime (pytriton's tritonserver); "
                        "production: onnxruntime_onnx on GPUs (official containers)")


def _export_encoder(args: argparse.Namespace) -> int:
    from headserve.backbones import load_encoder
    from headserve.encoders import get_encoder
    from headserve.export.model_config import Runtime
    from headserve.export.repository import add_encoder

    spec = get_encoder(args.name)
    if args.encoder_weights:
        spec = spec.with_weights(args.encoder_weights)
    written = add_encoder(args.repo, load_encoder(spec), Runtime(args.runtime))
    print(f"{written.name} version {written.version}: {written.path} (max |ONNX - torch| {_fmt(written.max_abs_diff)})")
    return 0


def _export_head(args: argparse.Namespace) -> int:
    from headserve.export.pipeline import export_head

    for written in export_head(args.artifact, args.repo, args.runtime,
                               encoder_name=args.encoder or None, encoder_weights=args.encoder_weights):
        print(f"{written.name} version {written.version}: {written.path}"
              + (f" (max |ONNX - torch| {_fmt(written.max_abs_diff)})" if written.max_abs_diff else ""))
    return 0


def _fmt(diffs: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())
