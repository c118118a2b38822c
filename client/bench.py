"""Client benchmark: preprocessing cost per crop, and end-to-end crops/s at concurrency 1, 4 and 16.

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
        info = HeadInfo(name, ("a", "b"), (), spec.encoder_type, spec.model_id, spec.preprocess, 64, ())
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
