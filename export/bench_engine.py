"""Encoder engines on a CPU against the machine's own matrix-multiply ceilings (`headserve.export.bench_engine`).

For each encoder (real architectures with random weights, ``headserve.standins``: the compute of trained
ones) and each engine x precision (ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 where the CPU has it):

- in-process at batch 32 on the exported ``model.onnx`` (``engine_encoder``, every core);
- served over gRPC by the local tritonserver: batch 32 at concurrency 2, batch 1 at concurrency 16;
- training's extraction (decode included) in crops/s, with eager PyTorch fp32 (what training ran before
  engines) beside it;
- the parity check's figures: min cosine to fp32 PyTorch and the head's top-1 agreement on the sample.

Each rate is converted to GFLOP/s (the encoder's FLOPs per image, counted by torch's FlopCounterMode)
and put beside the machine's fp32 and bf16 matrix-multiply ceilings, measured in the same run: fp32 by
ONNX Runtime's MatMul (MLAS), bf16 by OpenVINO's MatMul at bf16 precision (oneDNN). Every
configuration is measured in interleaved rounds; each figure is the median with the [min, max] range.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from headserve.contract import PIXELS


@dataclass(frozen=True)
class EngineBenchConfig:
    """What the engine benchmark measures and for how long."""

    encoders: tuple[str, ...] = ("clip:ViT-B-32", "dinov3:vits16")  # real architectures, random weights
    batch: int = 32  # crops per batched request and in-process call
    rounds: int = 3  # interleaved rounds: the median and range are over these
    requests: int = 3  # batch requests per client, configuration and round
    single_requests: int = 64  # batch-1 requests per round at concurrency 16
    concurrency: int = 16  # clients of the batch-1 mode
    extraction_crops: int = 128  # crops of each training-extraction measurement (decode included)
    gemm_size: int = 2048  # square matrices of the ceiling measurements
    weights_dir: Path = Path(".headserve-cache/standins")  # where the random-weight checkpoints are kept
    smoke: bool = False  # tiny twins and one short round: shows the benchmark runs, measures nothing real


SMOKE = EngineBenchConfig(encoders=("clip:tiny",), rounds=1, requests=1, single_requests=16, concurrency=4,
                          extraction_crops=32, gemm_size=512, smoke=True)


@dataclass
class Rates:
    """Samples of one configuration, one per round."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self) -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return f"{self.values[0]:.1f}"
        return f"{self.median:.1f} [{min(self.values):.1f}, {max(self.values):.1f}]"


def engines_here() -> list[tuple[str, str]]:
    """(engine, precision) pairs this machine runs: bf16 only where OpenVINO reports BF16."""
    from headserve.export.engine import cpu_capabilities

    caps = cpu_capabilities()
    pairs = [("onnxruntime", "fp32")]
    if caps:
        pairs.append(("openvino", "fp32"))
    if "BF16" in caps:
        pairs.append(("openvino", "bf16"))
    return pairs


def run(out: Path, config: EngineBenchConfig | None = None) -> list[str]:
    config = config or EngineBenchConfig()
    cores = os.cpu_count() or 1
    pairs = engines_here()
    lines = ["## Encoder engines on the CPU (`headserve.export.bench_engine`)", "",
             f"Random-weight stand-ins of the real architectures, {cores} cores for every side. Images (crops) per "
             "second, median over interleaved rounds [min, max]; GFLOP/s = rate x the encoder's GFLOP per image, "
             "beside this machine's matrix-multiply ceiling at the same precision, measured in the same run.", ""]
    ceilings = {"fp32": Rates(), "bf16": Rates()}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="headserve-engines-") as tmp:
        from headserve.train.bench_scale import OBJECTS_PER_IMAGE, write_photo_dataset

        dataset = write_photo_dataset(Path(tmp) / "photos", -(-config.extraction_crops // OBJECTS_PER_IMAGE))
        for encoder in config.encoders:
            print(f"  {encoder}: exporting each engine and serving ...", flush=True)
            results[encoder] = _bench_encoder(encoder, pairs, config, Path(tmp) / encoder.replace(":", "_"), dataset,
                                              ceilings)
    lines += _ceiling_lines(ceilings, config)
    for encoder, measured in results.items():
        lines += _encoder_lines(encoder, measured, ceilings, pairs)
    (out / "engines.json").write_text(json.dumps({
        "ceilings": {k: v.values for k, v in ceilings.items()},
        "encoders": {e: {"gflop_per_image": r["gflop"], "figures": r["figures"],
                         "rates": {k: v.values for k, v in r["rates"].items()}} for e, r in results.items()},
    }, indent=1) + "\n")
    return lines


def smoke(out: Path) -> list[str]:
    return run(out, SMOKE)


# ---------------------------------------------------------------------------------------------
# Ceilings


def gemm_ceilings(size: int, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 and bf16 matrix-multiply rates in GFLOP/s, best of ``repeats`` (every core).

    One ONNX MatMul: fp32 through ONNX Runtime (MLAS, what serves fp32), bf16 through OpenVINO at bf16
    precision (oneDNN, what serves bf16).
    """
    import onnx
    import onnx.numpy_helper
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    # b is a weight (an initializer), as in an encoder: each engine lays it out once, at compile time
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
                              initializer=[onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    flops = 2.0 * size ** 3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rates = {"fp32": flops / _best(lambda: session.run(None, {"a": a}), repeats) / 1e9}
    with tempfile.TemporaryDirectory(prefix="headserve-gemm-") as tmp:
        onnx.save(model, f"{tmp}/gemm.onnx")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(f"{tmp}/gemm.onnx"), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": "1",
                                       "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    rates["bf16"] = flops / _best(lambda: request.infer({"a": a}), repeats) / 1e9
    return rates


def _best(call, repeats: int) -> float:
    call()  # warm
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def gflop_per_image(graph, size: int) -> float:
    """The encoder's forward FLOPs for one image (multiply-adds counted as two), by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, size, size, 3), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference path (open_clip) is one op the counter does not see; the
    # regular path is what the exported graph computes, projections included
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), counter:
            graph(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------------
# One encoder


def _bench_encoder(encoder: str, pairs: list[tuple[str, str]], config: EngineBenchConfig, root: Path,
                   dataset: Path, ceilings: dict[str, Rates]) -> dict:
    import torch

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.export.engine import engine_encoder, parity_figures, sample_pixels
    from headserve.head_file import load_head
    from headserve.server import LocalTriton, ServerConfig

    spec = get_encoder(encoder)
    if not spec.is_tiny:
        from headserve.standins import write_random_weights

        spec = write_random_weights(encoder, config.weights_dir)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    graph = encoder_graph(load_encoder(spec))
    size = spec.preprocess.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (config.batch, size, size, 3), dtype=np.uint8)
    repo, heads, onnx_path, artifact = _repository(root, spec, pairs)
    _, head = load_head(artifact)

    def decide(emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.from_numpy(emb))[1].numpy()

    sample, source = sample_pixels(spec.preprocess)
    with torch.inference_mode():
        reference = graph(torch.from_numpy(sample)).numpy()
    in_process = {pair: engine_encoder(onnx_path, *pair, threads=cores) for pair in pairs}
    figures = {f"{e} {p}": vars(parity_figures(reference, in_process[(e, p)](sample), e, p, source, decide))
               for e, p in pairs}
    rates: dict[str, Rates] = {}
    with LocalTriton(ServerConfig(repository=repo, startup_timeout_s=600)) as server:
        for model in heads.values():
            _load(server.grpc_url, model, pixels, 1, 1)  # warm
        for r in range(config.rounds):
            print(f"    round {r + 1}/{config.rounds}", flush=True)
            for kind, value in gemm_ceilings(config.gemm_size).items():
                ceilings[kind].values.append(value)
            rates.setdefault("torch eager fp32 extraction", Rates()).values.append(
                _extraction_rate(spec, graph, dataset, config, "torch", "fp32"))
            for pair in pairs:
                name = f"{pair[0]} {pair[1]}"
                rates.setdefault(f"{name} in-process b32", Rates()).values.append(
                    _in_process_rate(in_process[pair], pixels, config.requests))
                rates.setdefault(f"{name} served b32 c2", Rates()).values.append(
                    _load(server.grpc_url, heads[pair], pixels, 2, config.requests))
                rates.setdefault(f"{name} served b1 c16", Rates()).values.append(
                    _load(server.grpc_url, heads[pair], pixels[:1], config.concurrency,
                          max(1, config.single_requests // config.concurrency)))
                if pair[0] != "onnxruntime":  # ONNX Runtime serves what eager PyTorch fp32 trains on, measured above
                    rates.setdefault(f"{name} extraction", Rates()).values.append(
                        _extraction_rate(spec, graph, dataset, config, *pair))
    return {"gflop": gflop_per_image(graph, size), "figures": figures, "rates": rates}


def _repository(root: Path, spec, pairs: list[tuple[str, str]]) -> tuple[Path, dict, Path, Path]:
    """One head exported per engine x precision: the first on the encoder's own model, the others on variants
    of the same ``model.onnx`` rendered for their engine, each with its ensemble."""
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.model_config import Runtime, parameters_of, parse
    from headserve.export.pipeline import export_head
    from headserve.export.repository import (
        encoder_desc,
        encoder_model_name,
        publish_version,
        read_served_head,
        write_ensemble,
    )

    repo = root / "repo"
    artifact = write_example_head(spec, ExampleHead("h"), root / "h")
    export_head(artifact, repo, "local", engine="onnxruntime", precision="fp32")
    base = encoder_model_name(spec.name)
    version = repo / base / "1"
    params = parameters_of(parse((repo / base / "config.pbtxt").read_text()))
    files = {p.name: p for p in version.iterdir() if p.is_file() and p.name != "model.py"}  # graph, weights, fingerprint
    served = read_served_head(repo, "h", "a benchmark variant")[0]
    heads = {pairs[0]: "h"}
    for engine, precision in pairs[1:]:
        suffix = f"{engine}_{precision}"
        desc = encoder_desc(f"{base}_{suffix}", spec, {**params, "engine": engine, "precision": precision},
                            engine=engine, engine_precision=precision)
        publish_version(repo / desc.name, desc, Runtime.LOCAL, files)
        write_ensemble(repo, replace(served, name=f"h_{suffix}"), desc.name, "h_head", Runtime.LOCAL)
        heads[(engine, precision)] = f"h_{suffix}"
    return repo, heads, version / "model.onnx", artifact


def _in_process_rate(encoder, pixels: np.ndarray, requests: int) -> float:
    encoder(pixels[:1])  # warm
    t0 = time.perf_counter()
    for _ in range(requests):
        encoder(pixels)
    return requests * len(pixels) / (time.perf_counter() - t0)


def _load(url: str, model: str, pixels: np.ndarray, clients: int, requests: int) -> float:
    """``clients`` threads each sending ``requests`` requests of ``pixels``; images per second."""
    import threading

    import tritonclient.grpc as grpcclient

    start = threading.Barrier(clients + 1)

    def worker() -> None:
        with grpcclient.InferenceServerClient(url) as client:
            inp = grpcclient.InferInput(PIXELS, list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(pixels)
            start.wait()
            for _ in range(requests):
                client.infer(model, [inp], client_timeout=600)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return clients * requests * len(pixels) / (time.perf_counter() - t0)


def _extraction_rate(spec, graph, dataset: Path, config: EngineBenchConfig, engine: str, precision: str) -> float:
    """Training's extraction, decode included, in crops/s (no cache; OpenVINO's compile is before the clock,
    as a long run amortises it)."""
    from headserve.train.dataset import read_yolo
    from headserve.train.embed import EmbedConfig, extract

    objects = read_yolo(dataset).objects[:config.extraction_crops]
    embed = EmbedConfig(device="cpu", engine=engine, precision=precision, batch_size=config.batch)
    run = extract([o.image for o in objects], [o.box for o in objects], graph, spec.preprocess, spec.embedding_dim,
                  embed)
    return float(run.ok.sum()) / run.seconds


# ---------------------------------------------------------------------------------------------
# Report


def _ceiling_lines(ceilings: dict[str, Rates], config: EngineBenchConfig) -> list[str]:
    return [f"Matrix-multiply ceilings ({config.gemm_size}x{config.gemm_size}, GFLOP/s, best round [each round's "
            f"median, min]): fp32 (ONNX Runtime MLAS) {max(ceilings['fp32'].values):.0f} [{ceilings['fp32'].median:.0f}, "
            f"{min(ceilings['fp32'].values):.0f}], bf16 (OpenVINO oneDNN) {max(ceilings['bf16'].values):.0f} "
            f"[{ceilings['bf16'].median:.0f}, {min(ceilings['bf16'].values):.0f}]. % of ceiling is against the best "
            "round.", ""]


def _encoder_lines(encoder: str, measured: dict, ceilings: dict[str, Rates], pairs: list[tuple[str, str]]) -> list[str]:
    gflop, rates, figures = measured["gflop"], measured["rates"], measured["figures"]
    lines = [f"### {encoder} ({gflop:.2f} GFLOP per image)", "",
             "| engine | measurement | images/s | GFLOP/s | % of ceiling | min cosine | top-1 agreement |",
             "|---|---|---|---|---|---|---|"]
    for engine, precision in pairs:
        name = f"{engine} {precision}"
        fig = figures[name]
        ceiling = max(ceilings[precision].values)  # a ceiling: the best round, the least disturbed
        for what in ("in-process b32", "served b32 c2", "served b1 c16", "extraction"):
            torch_side = engine == "onnxruntime" and what == "extraction"  # training before engines
            r = rates["torch eager fp32 extraction" if torch_side else f"{name} {what}"]
            label = "extraction (eager PyTorch fp32, what it serves)" if torch_side else what
            lines.append(f"| {name} | {label} | {r.cell()} | {r.median * gflop:.0f} | "
                         f"{100 * r.median * gflop / ceiling:.0f}% | {fig['min_cosine']:.5f} | "
                         f"{fig['top1_agreement']:.3f} |")
    lines += [""] + _ratio_lines(rates, pairs) + [""]
    return lines


def _ratio_lines(rates: dict[str, Rates], pairs: list[tuple[str, str]]) -> list[str]:
    best = next((f"{e} {p}" for e, p in (("openvino", "bf16"), ("openvino", "fp32")) if (e, p) in pairs), None)
    if best is None:
        return []
    rows = [
        (f"served b32 c2, {best} / onnxruntime fp32", rates[f"{best} served b32 c2"],
         rates["onnxruntime fp32 served b32 c2"], ">= 2.0 (clip) / 1.8 (dinov3)"),
        (f"{best}: served b32 c2 / in-process b32", rates[f"{best} served b32 c2"], rates[f"{best} in-process b32"],
         ">= 0.85"),
        (f"extraction, {best} / eager PyTorch fp32", rates[f"{best} extraction"], rates["torch eager fp32 extraction"],
         ">= 3"),
    ]
    return ["| ratio (medians) | target | value |", "|---|---|---|"] + [
        f"| {label} | {target} | {num.median / den.median:.2f} |" for label, num, den, target in rows]
