"""Client benchmark (``headserve.app.bench.client``): preprocessing cost per crop, end-to-end crops/s at
concurrency 1, 4 and 16, the mining estimate, and what the decision metrics cost (``:metrics``).

Builds a small repository (heads trained on the tiny twins over the synthetic digits dataset), serves it with
the local tritonserver, and drives it with ``HeadClient``s, one per concurrent caller, each sending batches of
``BATCH`` crops. Numbers are reported, never asserted.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headserve.app.bench.repository import BenchRepository
from headserve.app.bench.timing import call_seconds, run_load, spread

CONCURRENCY = (1, 4, 16)
BATCH = 8  # crops per request, as a detector's per-image crop list
# specs only: no weights are loaded
PREPROCESS_ENCODERS = ("clip:tiny", "clip:ViT-B-32", "dinov3:vitb16", "dinov2:vitb14")


@dataclass(frozen=True)
class ClientBench:
    """How long each part of the client benchmark runs."""

    requests_per_caller: int = 24  # requests each concurrent caller sends
    metrics_rounds: int = 15  # interleaved off/on rounds; the spread across rounds is reported
    metrics_calls: int = 20  # classify calls per side per round
    repeats: int = 15  # timings of the client-side work alone (median reported)


SMOKE = ClientBench(requests_per_caller=2, metrics_rounds=2, metrics_calls=2, repeats=3)


def _digits_heads(out: Path, prefix: str, encoders: tuple[str, ...],
                  prompts: bool) -> tuple[Path, BenchRepository, dict]:
    """A working directory under ``out`` with the digits dataset and one trained head per encoder (CLIP heads
    with their prompt prefilter when ``prompts``, so the estimate can show its cost); head name -> outcome."""
    from headserve.train.synth import SynthConfig, build_digits_dataset

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    dataset = build_digits_dataset(work / "dataset", SynthConfig(num_images=40))
    built = BenchRepository(work)
    heads = {}
    for enc in encoders:
        name = "bench_" + enc.replace(":", "_")
        heads[name] = built.trained_head(dataset, enc, name, prompts=prompts and enc.startswith("clip:"))
    return work, built, heads


def run(out: Path, smoke: bool = False) -> list[str]:
    import shutil

    from PIL import Image

    from headserve.client import HeadClient
    from headserve.encoders import get_encoder
    from headserve.preprocess import prepare_batch
    from headserve.train.dataset import load_crop

    bench = SMOKE if smoke else ClientBench()
    lines = ["## Client (`headserve.app.bench.client`)", ""]
    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 256, (180, 140, 3), dtype=np.uint8))
    lines += ["Client-side preprocessing (decode-free PIL crop 140x180 -> uint8 input), per crop:", "",
              "| encoder spec | input | rule | ms per crop |", "|---|---|---|---|"]
    for name in PREPROCESS_ENCODERS:
        pre = get_encoder(name).preprocess
        prepare_batch([crop] * 8, pre)  # what the client's prepare runs, past its error wrapping
        t = statistics.median(call_seconds(lambda: prepare_batch([crop] * 64, pre), 5, warm=False)) / 64
        rule = pre.resize if pre.resize_size is None else f"{pre.resize} from {pre.resize_size}"
        lines.append(f"| {name} | {pre.input_size} | {rule}, {pre.interpolation} | {t * 1e3:.3f} |")

    work, built, trained = _digits_heads(out, "headserve-client-bench-", ("clip:tiny", "dinov3:tiny"), prompts=True)
    lines += ["", f"End to end over gRPC (local tritonserver, python backend + ONNX Runtime on CPU), "
              f"{BATCH} crops per request, one client per concurrent caller, {bench.requests_per_caller} requests "
              "each:", "", "| head | concurrency | crops/s | p50 ms per request | p95 ms per request |",
              "|---|---|---|---|---|"]
    estimates = []
    with built.serve() as server:
        url = server.grpc_url
        for head, outcome in trained.items():
            crops = [load_crop(o) for o in outcome.test_objects]
            batch = (crops * (BATCH // max(1, len(crops)) + 1))[:BATCH]
            with HeadClient(url) as warm:
                warm.classify(head, batch)
            for c in CONCURRENCY:
                load = run_load(c, lambda _: HeadClient(url), lambda client, _: client.classify(head, batch),
                                items_per_call=len(batch), requests=bench.requests_per_caller,
                                warm=lambda client: client.info(head))
                lat = np.array(load.latencies_s)
                lines.append(f"| {head} | {c} | {load.rate:.0f} | {np.percentile(lat, 50) * 1e3:.1f} | "
                             f"{np.percentile(lat, 95) * 1e3:.1f} |")
            with HeadClient(url) as client:
                estimates.append(client.estimate(head, 1_000_000))
    shutil.rmtree(work, ignore_errors=True)
    lines += ["", "Compute estimate for a mining run of 1M candidates (`HeadClient.estimate`, batch 8):", "",
              "| head | ms per candidate, no prefilter | hours | ms per candidate, with prefilter | hours |",
              "|---|---|---|---|---|"]
    for est in estimates:
        base, with_pf = est.per_candidate_without_prefilter_s, est.per_candidate_with_prefilter_s
        pf = ("n/a (no prompt model) | n/a" if with_pf is None
              else f"{with_pf * 1e3:.3f} | {with_pf * est.candidates / 3600:.2f}")
        lines.append(f"| {est.head} | {base * 1e3:.3f} | {base * est.candidates / 3600:.2f} | {pf} |")
    lines += ["", "The tiny twins make the server side cheap, so these numbers mostly measure the client, gRPC and "
              "the python backend; real encoders move the bottleneck to the encoder."]
    return lines


def metrics(out: Path, smoke: bool = False) -> list[str]:
    """The cost of decision metrics to a client: the same classify calls with no observer and with
    ``DecisionMetrics``, interleaved round by round (order alternating) on one served head, plus the
    client-side work alone (preprocessing, decisions, observing) without the server."""
    import shutil
    import time

    from headserve.client import HeadClient, decide
    from headserve.client.inputs import prepare
    from headserve.client.metrics import DecisionMetrics
    from headserve.train.dataset import load_crop

    bench = SMOKE if smoke else ClientBench()
    work, built, trained = _digits_heads(out, "headserve-metrics-bench-", ("clip:tiny",), prompts=False)
    (head, outcome), = trained.items()
    crops = [load_crop(o) for o in outcome.test_objects]
    lines = ["## Decision metrics cost (`headserve.app.bench.client:metrics`)", "",
             f"Sync `HeadClient.classify` on the local server (clip:tiny head, concurrency 1), {bench.metrics_rounds} "
             f"interleaved rounds of {bench.metrics_calls} calls per side; per crop, median [min, max] over rounds:",
             "", "| crops per call | metrics off, ms | metrics on, ms | on / off |", "|---|---|---|---|"]
    with built.serve() as server:
        for batch_size in (8, 32):
            batch = (crops * (batch_size // len(crops) + 1))[:batch_size]
            with HeadClient(server.grpc_url) as off, \
                    HeadClient(server.grpc_url, observer=DecisionMetrics()) as on:
                sides = {"off": off, "on": on}
                for client in sides.values():
                    client.classify(head, batch)
                per_crop: dict[str, list[float]] = {"off": [], "on": []}
                for r in range(bench.metrics_rounds):
                    for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                        t0 = time.perf_counter()
                        for _ in range(bench.metrics_calls):
                            sides[side].classify(head, batch)
                        per_crop[side].append((time.perf_counter() - t0) / (bench.metrics_calls * batch_size))
                info = off.info(head)
            ratios = [b / a for a, b in zip(per_crop["off"], per_crop["on"])]
            lines.append(f"| {batch_size} | {spread(per_crop['off'], 1e3, 3)} | {spread(per_crop['on'], 1e3, 3)} | "
                         f"{spread(ratios, 1, 3)} |")
    shutil.rmtree(work, ignore_errors=True)

    # The client's own work per crop, without the server: what the observer adds to it.
    batch = (crops * (32 // len(crops) + 1))[:32]
    probs = np.random.default_rng(0).dirichlet(np.ones(len(info.classes)), size=len(batch)).astype(np.float32)
    ood = np.random.default_rng(1).gamma(2.0, 0.5, size=(len(batch), 1)).astype(np.float32)
    observer = DecisionMetrics()
    predictions = decide(info, probs, ood_scores=ood)
    work_s = statistics.median(call_seconds(lambda: decide(info, probs, ood_scores=ood) and prepare(batch, info),
                                            bench.repeats, warm=False)) / len(batch)
    observe_s = statistics.median(call_seconds(lambda: observer.observe_batch(info, predictions, 0.01),
                                               bench.repeats, warm=False)) / len(batch)
    lines += ["", f"Client-side work alone, 32 crops per call (median of {bench.repeats}):", "",
              "| preprocessing + decisions, us per crop | observe_batch, us per crop | share |", "|---|---|---|",
              f"| {work_s * 1e6:.1f} | {observe_s * 1e6:.2f} | {observe_s / work_s:.2%} |", "",
              "The issue's budget is 5% more per crop with metrics on."]
    return lines
