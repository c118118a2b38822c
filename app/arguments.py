"""Argument helpers shared by the commands, and which flag sets which config field (parsing only; no heavy imports)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # for the annotations only: the client's commands must not import torch
    from headserve.encoders import EncoderSpec
    from headserve.train.embed import EmbedConfig

# Config field -> the flag that sets it, so an error about a field's value names the flag the user typed
# (HeadserveError.setting, and any field a message names in backticks). A field set by no flag, or by
# different flags in different commands, is left out; library messages never name flags themselves.
FLAG_OF_SETTING: dict[str, str] = {
    "bg_classes": "--bg",  # TrainRequest
    "ood_holdout": "--ood-holdout",  # TrainRequest
    "shard_rows": "--shard-rows",  # EmbedRequest
    "actors": "--actors",  # EmbedRequest
    "bg_per_image": "--bg-per-image",  # EmbedRequest
    "reject_outside": "--reject-outside",  # TrainRequest, EmbedRequest
    "workers": "--workers",  # EmbedConfig
    "engine": "--engine",  # EmbedConfig, EngineChoice (export)
    "precision": "--precision",  # EmbedConfig, EngineChoice (export)
    "grpc_port": "--grpc-port",  # ServerConfig
    "http_port": "--http-port",  # ServerConfig
    "metrics_port": "--metrics-port",  # ServerConfig
    "clients": "--clients",  # SoakConfig
    "seconds": "--seconds",  # SoakConfig
    "requests": "--requests",  # SoakConfig
    "batch": "--batch",  # SoakConfig
    "encoder_name": "--encoder",  # export_head: the registry encoder of a head whose meta names none
    "images": "--images",  # DemoConfig
    "encoder_weights": "--encoder-weights",  # DemoConfig, add_prompt_model
    "device": "--device",  # EmbedConfig
    "instances": "--instances",  # RuntimeOptions
    "cpu_threads": "--cpu-threads",  # RuntimeOptions
    "repo": "--repo",
    "runtime": "--runtime",  # export: local or production  # the model repository of export and its subcommands
    "version": "--version",  # drift: the served version of the compared artifact
    "class_psi": "--class-psi",  # DriftThresholds
    "confidence_psi": "--confidence-psi",  # DriftThresholds
    "ood_rate_p_value": "--p-value",  # DriftThresholds: one flag sets both tests' p-value
    "ks_p_value": "--p-value",  # DriftThresholds
    "min_window": "--min-window",  # DriftThresholds
}


def flag_for(setting: str) -> str | None:
    """The flag that sets config field ``setting``, or None when no single flag does."""
    return FLAG_OF_SETTING.get(setting)


class CommandParser(argparse.ArgumentParser):
    """A command's parser that adds some options only when that command is parsed or its help is shown.

    `train`'s recipe options are built from TrainConfig and the default profile (torch-free, but training
    code the client's commands have no use for): they are added only when `train` itself is parsed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        self._deferred.append(add)

    def _complete(self) -> None:
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def add_later(p: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add options with ``add`` when ``p`` is parsed (a CommandParser), or now (any other parser)."""
    if isinstance(p, CommandParser):
        p.defer(add)
    else:
        add(p)


def add_encoder_args(p: argparse.ArgumentParser, default: str = "clip:tiny",
                     default_help: str = "an untrained twin with random weights: its numbers mean nothing") -> None:
    """--encoder and --encoder-weights; ``default_help`` says what the default (``default``) is to the user."""
    shown = f"{default}, {default_help}" if default else default_help
    p.add_argument("--encoder", default=default,
                   help=f"registry name, e.g. clip:ViT-B-32 or dinov3:vitb16 (default {shown})")
    p.add_argument("--encoder-weights", default=None, metavar="PATH",
                   help="local weights instead of the hub: a transformers model directory (DINOv3, DINOv2, "
                        "V-JEPA 2), a CLIP checkpoint file, or a timm DINOv3 file or directory")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device, --precision and --workers: where and how crops are embedded (and heads trained)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto|cpu|cuda|cuda:N|mps for embedding and head training (auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", dest="embed_precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="encoder precision while embedding (torch autocast, or OpenVINO's with --engine openvino); "
                        "bf16/fp16 are checked against fp32 on a sample first and refused beyond tolerance (default fp32)")
    p.add_argument("--engine", dest="embed_engine", choices=("torch", "openvino"), default="torch",
                   help="what computes the embeddings: torch (eager, any --device) or openvino (the CPU model "
                        "`export head` then serves, at --precision fp32 or bf16; checked against fp32 on the "
                        "first batch; default torch)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="image decoding threads feeding the encoder (default 0: this machine's cores)")


def embed_config_from_args(args: argparse.Namespace) -> EmbedConfig:
    from headserve.train.embed import EmbedConfig

    return EmbedConfig(device=args.device, precision=args.embed_precision, workers=args.workers,
                       engine=getattr(args, "embed_engine", "torch"))


def encoder_from_args(args: argparse.Namespace) -> EncoderSpec:
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
        raise argparse.ArgumentTypeError(
            f"hidden sizes {text!r} must be comma-separated integers, e.g. 768,384") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes {text!r} must be positive")
    return sizes
