"""`headserve demo`: the whole path offline, on a CPU, in a few minutes.

Builds a YOLO dataset from real images that ship in installed packages (scikit-learn digits on
scikit-image textures), trains a calibrated head per encoder, exports encoders and heads to ONNX
(checked against PyTorch), writes a Triton repository, starts the real local tritonserver, classifies
the held-out crops over gRPC, and prints a report. The default encoders are the untrained tiny twins;
``--encoder dinov3:vitb16`` (with network access or --encoder-weights) runs the same path on real weights.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headserve.app.arguments import add_device_args, embed_config_from_args, parse_hidden
from headserve.errors import ConfigError

if TYPE_CHECKING:
    from headserve.train.embed import EmbedConfig

DEFAULT_ENCODERS = ("clip:tiny", "dinov3:tiny")


@dataclass(frozen=True)
class DemoConfig:
    """One run of the demo: what to generate, which encoders to train on, and where everything goes."""

    out: Path = Path("demo-out")  # working directory for the dataset, heads, repository and report
    encoders: tuple[str, ...] = DEFAULT_ENCODERS  # encoder registry names; one head each
    encoder_weights: str | None = None  # local weights for the single encoder (DINOv3 directory or CLIP file)
    images: int = 240  # images in the generated dataset
    hidden: tuple[int, ...] = (256,)  # MLP widths of every head; () is a linear head
    profile: str = "full"  # training recipe profile
    embed: EmbedConfig | None = None  # device, precision and decoding threads; None: the defaults

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError.bad_value("images", self.images, "the demo dataset needs at least one image")
        if not self.encoders:
            raise ConfigError.bad_value("encoders", "()", "name at least one encoder")
        if self.encoder_weights and len(self.encoders) != 1:
            raise ConfigError.bad_value("encoder_weights", self.encoder_weights,
                                        f"local weights belong to one encoder, but {len(self.encoders)} are named "
                                        f"({', '.join(self.encoders)}); name only the one the weights belong to")


@dataclass
class HeadRun:
    encoder: str
    head: str
    outcome: object  # headserve.train.pipeline.TrainOutcome


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="dataset -> heads -> ONNX -> local Triton -> gRPC answers, offline")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="working directory for every artifact")
    p.add_argument("--encoder", action="append", default=None,
                   help=f"encoder registry name; repeat for several (default: {', '.join(DEFAULT_ENCODERS)})")
    p.add_argument("--encoder-weights", default=None, metavar="PATH",
                   help="local weights for a single --encoder (DINOv3 directory or CLIP checkpoint)")
    p.add_argument("--images", type=int, default=240, help="images in the generated dataset")
    p.add_argument("--hidden", type=parse_hidden, default=(256,), help="MLP widths")
    p.add_argument("--profile", default="full", help="training recipe profile (see `headserve train --help`)")
    add_device_args(p)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    return run_demo(DemoConfig(out=args.out, encoders=tuple(args.encoder or DEFAULT_ENCODERS),
                               encoder_weights=args.encoder_weights, images=args.images, hidden=args.hidden,
                               profile=args.profile, embed=embed_config_from_args(args)))


def run_demo(config: DemoConfig) -> int:
    from headserve.encoders import get_encoder
    from headserve.export.pipeline import export_head
    from headserve.train.embed import EmbedConfig
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.profiles import profile_config
    from headserve.train.synth import SynthConfig, build_digits_dataset

    out = config.out
    encoders = config.encoders
    for name in encoders:  # every name and the profile are checked before minutes of work on the first
        get_encoder(name)
    profile_config(config.profile)
    t_start = time.perf_counter()
    print(f"[1/5] dataset: digits from sklearn load_digits on scikit-image textures -> {out / 'dataset'}")
    dataset = build_digits_dataset(out / "dataset", SynthConfig(num_images=config.images))

    runs: list[HeadRun] = []
    for name in encoders:
        spec = get_encoder(name)
        if config.encoder_weights:
            spec = spec.with_weights(config.encoder_weights)
        head = "digits_" + name.replace(":", "_").replace("-", "_").lower()
        print(f"[2/5] train: head {head} on {spec.display_name}")
        outcome = train_from_yolo(TrainRequest(dataset=dataset, encoder=spec, out=out / "heads" / head, name=head,
                                               hidden=config.hidden, train=profile_config(config.profile),
                                               embed=config.embed or EmbedConfig(),
                                               profile=config.profile))
        runs.append(HeadRun(name, head, outcome))

    repo = out / "model_repository"
    print(f"[3/5] export: ONNX (checked against PyTorch) into {repo}")
    for run in runs:
        for written in export_head(run.outcome.artifact, repo, "local", encoder_weights=config.encoder_weights):
            diff = max(written.max_abs_diff.values(), default=0.0)
            print(f"      {written.name} v{written.version}" + (f"  max |ONNX - torch| = {diff:.1e}" if diff else ""))

    print("[4/5] serve: starting the local tritonserver (python backend + ONNX Runtime) on loopback")
    from headserve.server import LocalTriton, ServerConfig

    with LocalTriton(ServerConfig(repository=repo)) as server:
        print(f"      ready at grpc://{server.grpc_url}")
        print("[5/5] classify: held-out crops over gRPC")
        report = [_serve_and_measure(server.grpc_url, run) for run in runs]
    _print_report(report, out, repo, time.perf_counter() - t_start)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _serve_and_measure(url: str, run: HeadRun) -> dict:
    import torch

    from headserve.client import HeadClient
    from headserve.contract import PROBS, SCORE_OUTPUTS
    from headserve.head import load_head
    from headserve.train.dataset import load_crop
    from headserve.train.evaluation import classification_metrics

    outcome = run.outcome
    meta, head = load_head(outcome.artifact)
    crops = [load_crop(o) for o in outcome.test_objects]
    latencies = []
    with HeadClient(url) as client:
        client.probabilities(run.head, crops[:1])  # warm-up: first request loads ONNX sessions' arenas
        for crop in crops[:64]:
            t0 = time.perf_counter()
            client.probabilities(run.head, [crop])
            latencies.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        served = client.probabilities(run.head, crops)
        batch_s = time.perf_counter() - t0
    # In-process reference: the artifact's head on the encoder's embeddings of the same pixels.
    from headserve.artifact import trained_encoder
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.train.embed import embed_pixels

    graph = encoder_graph(load_encoder(trained_encoder(meta, run.encoder)[0]))
    with torch.no_grad():
        ref = head(torch.from_numpy(embed_pixels(graph, outcome.test_pixels)))[SCORE_OUTPUTS.index(PROBS)]
    metrics = classification_metrics(served, outcome.test_labels, meta.classes, meta.background_indices)
    return {
        "head": run.head,
        "encoder": run.encoder,
        "untrained_encoder": meta.encoder_untrained,
        "classes": meta.classes,
        "n_test": int(len(crops)),
        "served_macro_f1_fg": metrics["macro_f1_fg"],
        "per_class_f1": {c: v["f1"] for c, v in metrics["per_class"].items()},
        "ece_before": outcome.metrics["ece_before"],
        "ece_after": outcome.metrics["ece_after"],
        "temperature": meta.temperature,
        "max_abs_diff_served_vs_torch": float(np.abs(served - ref.numpy()).max()),
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p95": float(np.percentile(latencies, 95)),
        "batch_crops_per_s": float(len(crops) / batch_s),
        "artifact": str(outcome.artifact),
    }


def _print_report(rows: list[dict], out: Path, repo: Path, seconds: float) -> None:
    print("\n=== headserve demo report ===")
    for r in rows:
        tag = " (encoder: untrained tiny twin, random weights)" if r["untrained_encoder"] else ""
        print(f"\nhead {r['head']} on {r['encoder']}{tag}, {r['n_test']} held-out crops")
        print(f"  macro F1 (foreground, served over gRPC): {r['served_macro_f1_fg']:.3f}")
        for cls, f1 in r["per_class_f1"].items():
            print(f"    {cls:<14} F1 {f1:.3f}")
        print(f"  ECE (15 bins): before temperature {r['ece_before']:.4f}, after {r['ece_after']:.4f} "
              f"(T = {r['temperature']:.3f})")
        print(f"  served vs in-process PyTorch probabilities: max |diff| = {r['max_abs_diff_served_vs_torch']:.1e}")
        print(f"  latency per single-crop request: p50 {r['latency_ms_p50']:.1f} ms, p95 {r['latency_ms_p95']:.1f} ms; "
              f"batched: {r['batch_crops_per_s']:.0f} crops/s")
        print(f"  artifact: {r['artifact']}")
    print(f"\nmodel repository: {repo}\nreport: {out / 'report.json'}\ntotal time: {seconds:.0f} s")
