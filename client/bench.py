"""Client benchmark: preprocessing cost per crop, end-to-end crops/s at concurrency 1, 4 and 16, and
what the decision metrics cost (``headserve.client.bench:metrics``).

Builds a small repository (tiny-twin heads on the synthetic digits dataset), serves it with the
local tritonserver, and drives it with ``HeadClient``s, one per concurrent caller, each sending
batches of ``BATCH`` crops. Numbers are reported, never asserted.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CONCURRENCY = (1, 4, 16)
BATCH = 8  # crops per request, as a detector's per-image crop list
REQUESTS_PER_CALLER = 24
# specs only: no weights are loaded
PREPROCESS_ENCODERS = ("clip:tiny", "clip:ViT-B-32", "dinov3:vitb16", "dinov2:vitb14")


def run(out: Path) -> list[str]:
    from PIL import Image

    from headserve.client import HeadClient
    from headserve.client.discovery import HeadInfo
    from headserve.client.preprocessing import prepare
    from headserve.contract import EncoderIdentity, ServedHead
    from headserve.encoders import get_encoder
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig
    from headserve.train.dataset import load_crop
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.synth import SynthConfig, build_digits_dataset
    from headserve.train.trainer import TrainConfig

    lines = ["## Client (`headserve.client.bench`)", ""]
    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 256, (180, 140, 3), dtype=np.uint8))
    lines += ["Client-side preprocessing (decode-free PIL crop 140x180 -> uint8 input), per crop:", "",
              "| encoder spec | input | rule | ms per crop |", "|---|---|---|---|"]
    for name in PREPROCESS_ENCODERS:
        spec = get_encoder(name)
        info = HeadInfo(ServedHead(name, ("a", "b"), EncoderIdentity.from_spec(spec)), 64, ())
        prepare([crop] * 8, info)
        t = _median(lambda: prepare([crop] * 64, info), 5) / 64
        pre = spec.preprocess
        rule = pre.resize if pre.resize_size is None else f"{pre.resize} from {pre.resize_size}"
        lines.append(f"| {name} | {pre.input_size} | {rule}, {pre.interpolation} | {t * 1e3:.3f} |")

    work = Path(tempfile.mkdtemp(prefix="headserve-client-bench-", dir=out))
    dataset = build_digits_dataset(work / "dataset", SynthConfig(num_images=40))
    repo = work / "model_repository"
    heads = {}
    for enc in ("clip:tiny", "dinov3:tiny"):
        name = "bench_" + enc.replace(":", "_")
        outcome = train_from_yolo(TrainRequest(dataset=dataset, encoder=get_encoder(enc), out=work / name, name=name,
                                               hidden=(64,), train=TrainConfig(epochs=10)))
        export_head(outcome.artifact, repo, "local")
        if enc.startswith("clip:"):  # the CLIP prefilter, so the estimate can show its cost
            from headserve.export.prompts import add_prompt_model

            add_prompt_model(repo, name, [f"a photo of the {c}" for c in outcome.meta.classes],
                             list(range(len(outcome.meta.classes))))
        heads[name] = [load_crop(o) for o in outcome.test_objects]
    lines += ["", f"End to end over gRPC (local tritonserver, python backend + ONNX Runtime on CPU), "
              f"{BATCH} crops per request, one client per concurrent caller, {REQUESTS_PER_CALLER} requests each:",
              "", "| head | concurrency | crops/s | p50 ms per request | p95 ms per request |", "|---|---|---|---|---|"]
    estimates = []
    with LocalTriton(ServerConfig(repository=repo)) as server:
        for head, crops in heads.items():
            batch = (crops * (BATCH // max(1, len(crops)) + 1))[:BATCH]
            with HeadClient(server.grpc_url) as warm:
                warm.classify(head, batch)
            for c in CONCURRENCY:
                crops_s, lat = _drive(server.grpc_url, head, batch, c)
                lines.append(f"| {head} | {c} | {crops_s:.0f} | {np.percentile(lat, 50) * 1e3:.1f} | "
                             f"{np.percentile(lat, 95) * 1e3:.1f} |")
            with HeadClient(server.grpc_url) as client:
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


def _drive(url: str, head: str, batch: list, concurrency: int) -> tuple[float, list[float]]:
    from headserve.client import HeadClient

    latencies: list[float] = []
    lock = threading.Lock()
    clients = [HeadClient(url) for _ in range(concurrency)]
    for c in clients:
        c.info(head)

    def caller(client: HeadClient) -> None:
        mine = []
        for _ in range(REQUESTS_PER_CALLER):
            t0 = time.perf_counter()
            client.classify(head, batch)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=(c,)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return concurrency * REQUESTS_PER_CALLER * len(batch) / wall, latencies


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


METRICS_ROUNDS = 15  # interleaved off/on rounds; the spread across rounds is reported
METRICS_CALLS = 20  # classify calls per side per round


def metrics(out: Path) -> list[str]:
    """The cost of decision metrics to a client: the same classify calls with no observer and with
    ``DecisionMetrics``, interleaved round by round (order alternating) on one served head, plus the
    client-side work alone (preprocessing, decisions, observing) without the server."""
    from headserve.client import HeadClient, decide
    from headserve.client.metrics import DecisionMetrics
    from headserve.client.preprocessing import prepare
    from headserve.encoders import get_encoder
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig
    from headserve.train.dataset import load_crop
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.synth import SynthConfig, build_digits_dataset
    from headserve.train.trainer import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="headserve-metrics-bench-", dir=out))
    dataset = build_digits_dataset(work / "dataset", SynthConfig(num_images=40))
    outcome = train_from_yolo(TrainRequest(dataset=dataset, encoder=get_encoder("clip:tiny"), out=work / "head",
                                           name="metrics_bench", hidden=(64,), train=TrainConfig(epochs=10)))
    export_head(outcome.artifact, work / "repo", "local")
    crops = [load_crop(o) for o in outcome.test_objects]
    lines = ["## Decision metrics cost (`headserve.client.bench:metrics`)", "",
             f"Sync `HeadClient.classify` on the local server (clip:tiny head, concurrency 1), {METRICS_ROUNDS} "
             f"interleaved rounds of {METRICS_CALLS} calls per side; per crop, median [min-max] over rounds:", "",
             "| crops per call | metrics off, ms | metrics on, ms | on / off |", "|---|---|---|---|"]
    with LocalTriton(ServerConfig(repository=work / "repo")) as server:
        for batch_size in (8, 32):
            batch = (crops * (batch_size // len(crops) + 1))[:batch_size]
            with HeadClient(server.grpc_url) as off, \
                    HeadClient(server.grpc_url, observer=DecisionMetrics()) as on:
                sides = {"off": off, "on": on}
                for client in sides.values():
                    client.classify(outcome.meta.name, batch)
                per_crop: dict[str, list[float]] = {"off": [], "on": []}
                for r in range(METRICS_ROUNDS):
                    for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                        t0 = time.perf_counter()
                        for _ in range(METRICS_CALLS):
                            sides[side].classify(outcome.meta.name, batch)
                        per_crop[side].append((time.perf_counter() - t0) / (METRICS_CALLS * batch_size))
                info = off.info(outcome.meta.name)
            ratios = [b / a for a, b in zip(per_crop["off"], per_crop["on"])]
            lines.append(f"| {batch_size} | {_spread(per_crop['off'], 1e3)} | {_spread(per_crop['on'], 1e3)} | "
                         f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] |")
    shutil.rmtree(work, ignore_errors=True)

    # The client's own work per crop, without the server: what the observer adds to it.
    batch = (crops * (32 // len(crops) + 1))[:32]
    probs = np.random.default_rng(0).dirichlet(np.ones(len(info.classes)), size=len(batch)).astype(np.float32)
    ood = np.random.default_rng(1).gamma(2.0, 0.5, size=(len(batch), 1)).astype(np.float32)
    observer = DecisionMetrics()
    predictions = decide(info, probs, ood_scores=ood)
    work_s = _median(lambda: decide(info, probs, ood_scores=ood) and prepare(batch, info), 15) / len(batch)
    observe_s = _median(lambda: observer.observe_batch(info, predictions, 0.01), 15) / len(batch)
    lines += ["", "Client-side work alone, 32 crops per call (median of 15):", "",
              "| preprocessing + decisions, us per crop | observe_batch, us per crop | share |", "|---|---|---|",
              f"| {work_s * 1e6:.1f} | {observe_s * 1e6:.2f} | {observe_s / work_s:.2%} |", "",
              "The issue's budget is 5% more per crop with metrics on."]
    return lines


def _spread(values: list[float], scale: float) -> str:
    return f"{statistics.median(values) * scale:.3f} [{min(values) * scale:.3f}-{max(values) * scale:.3f}]"
