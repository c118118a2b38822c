"""Encoder engines on a CPU against the machine's own matrix-multiply ceilings (``headserve.app.bench.engines``).

For each encoder (real architectures with random weights, ``headserve.standins``: the compute of trained
ones) and each engine x precision (ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 where the CPU has it):

- in-process at batch 32 on the exported ``model.onnx`` (``engine_encoder``, every core);
- served over gRPC by the local tritonserver: batch 32 at concurrency 2, batch 1 at concurrency 16;
- training's extraction (decode included) in crops/s, with eager PyTorch fp32 (what training ran before
  engines) beside it: the steady rate, without the engine's compile and the one-time fp32 comparison of the
  first batch (``extraction_rate``), both fixed costs that a real dataset amortises;
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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from headserve.app.bench.extraction import OBJECTS_PER_IMAGE, extraction_rate, write_photo_dataset
from headserve.app.bench.repository import SMOKE_ROUNDS, BenchRepository, EncoderRounds, EncoderUnderTest
from headserve.app.bench.timing import Measured, call_seconds, in_process_rate, interleaved_rounds, triton_load


@dataclass(frozen=True)
class EngineBenchConfig(EncoderRounds):
    """What the engine benchmark measures and for how long."""

    extraction_crops: int = 256  # crops of each training-extraction measurement (decode included)
    gemm_size: int = 2048  # square matrices of the ceiling measurements


SMOKE = EngineBenchConfig(**SMOKE_ROUNDS, extraction_crops=32, gemm_size=512)


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


def run(out: Path, smoke: bool = False, config: EngineBenchConfig | None = None) -> list[str]:
    config = config or (SMOKE if smoke else EngineBenchConfig())
    cores = os.cpu_count() or 1
    pairs = engines_here()
    lines = ["## Encoder engines on the CPU (`headserve.app.bench.engines`)", "",
             f"Random-weight stand-ins of the real architectures, {cores} cores for every side. Images (crops) per "
             "second, median over interleaved rounds [min, max]; GFLOP/s = rate x the encoder's GFLOP per image, "
             "beside this machine's matrix-multiply ceiling at the same precision, measured in the same run.", ""]
    ceilings = {"fp32": Measured(), "bf16": Measured()}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="headserve-engines-") as tmp:
        dataset = write_photo_dataset(Path(tmp) / "photos", -(-config.extraction_crops // OBJECTS_PER_IMAGE))
        for encoder in config.encoders:
            print(f"  {encoder}: exporting each engine and serving ...", flush=True)
            results[encoder] = _bench_encoder(encoder, pairs, config, Path(tmp) / encoder.replace(":", "_"), dataset)
            for precision, ceiling in ceilings.items():  # each encoder's rounds measured the ceilings too
                ceiling.rates += results[encoder]["rates"].pop(f"ceiling {precision}").rates
    lines += _ceiling_lines(ceilings, config)
    for encoder, measured in results.items():
        lines += _encoder_lines(encoder, measured, ceilings, pairs)
    (out / "engines.json").write_text(json.dumps({
        "ceilings": {k: v.rates for k, v in ceilings.items()},
        "encoders": {e: {"gflop_per_image": r["gflop"], "figures": r["figures"],
                         "rates": {k: v.rates for k, v in r["rates"].items()}} for e, r in results.items()},
    }, indent=1) + "\n")
    return lines


# ---------------------------------------------------------------------------------------------
# Ceilings


def gemm_ceilings(size: int, repeats: int = 5) -> dict[str, Callable[[], float]]:
    """This machine's fp32 and bf16 matrix-multiply rates in GFLOP/s, each a call that measures the best of
    ``repeats`` (every core).

    One ONNX MatMul: fp32 through ONNX Runtime (MLAS, what serves fp32), bf16 through OpenVINO at bf16
    precision (oneDNN, what serves bf16); both compiled here, once, before any clock.
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
    with tempfile.TemporaryDirectory(prefix="headserve-gemm-") as tmp:
        onnx.save(model, f"{tmp}/gemm.onnx")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(f"{tmp}/gemm.onnx"), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": "1",
                                       "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    calls = {"fp32": lambda: session.run(None, {"a": a}), "bf16": lambda: request.infer({"a": a})}
    return {kind: (lambda call=call: flops / min(call_seconds(call, repeats)) / 1e9) for kind, call in calls.items()}


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
                   dataset: Path) -> dict:
    import torch

    from headserve.export.engine import engine_encoder, parity_figures, sample_pixels
    from headserve.head import load_head
    from headserve.train.embed import EmbedConfig

    under = EncoderUnderTest.load(encoder, config.batch, config.weights_dir)
    spec, graph, pixels = under.spec, under.graph, under.pixels
    built = BenchRepository(root)
    heads, onnx_path, artifact = _repository(built, under, pairs)
    _, head = load_head(artifact)

    def decide(emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.from_numpy(emb))[1].numpy()

    sample, source = sample_pixels(spec.preprocess)
    with torch.inference_mode():
        reference = graph(torch.from_numpy(sample)).numpy()
    cores = os.cpu_count() or 1
    in_process = {pair: engine_encoder(onnx_path, *pair, threads=cores) for pair in pairs}
    figures = {f"{e} {p}": vars(parity_figures(reference, in_process[(e, p)](sample), e, p, source, decide))
               for e, p in pairs}

    def extraction(engine: str, precision: str) -> Callable[[], float]:
        embed = EmbedConfig(device="cpu", engine=engine, precision=precision, batch_size=config.batch)
        return lambda: extraction_rate(spec, graph, dataset, config.extraction_crops, embed)

    with built.serve(startup_timeout_s=600) as server:
        url = server.grpc_url
        for model in heads.values():
            triton_load(url, model, pixels, 1, 1)  # warm
        sides = {f"ceiling {kind}": measure for kind, measure in gemm_ceilings(config.gemm_size).items()}
        sides["torch eager fp32 extraction"] = extraction("torch", "fp32")
        for pair in pairs:
            name, model, encode = f"{pair[0]} {pair[1]}", heads[pair], in_process[pair]
            sides[f"{name} in-process b32"] = lambda encode=encode: in_process_rate(encode, pixels, config.requests)
            sides[f"{name} served b32 c2"] = lambda model=model: triton_load(url, model, pixels, 2,
                                                                             config.requests).rate
            sides[f"{name} served b1 c16"] = lambda model=model: triton_load(url, model, pixels[:1], config.concurrency,
                                                                             config.single_per_client).rate
            if pair[0] != "onnxruntime":  # ONNX Runtime serves what eager PyTorch fp32 trains on, measured above
                sides[f"{name} extraction"] = extraction(*pair)
        rates = interleaved_rounds(config.rounds, sides)
    return {"gflop": gflop_per_image(graph, spec.preprocess.input_size), "figures": figures, "rates": rates}


def _repository(built: BenchRepository, under: EncoderUnderTest,
                pairs: list[tuple[str, str]]) -> tuple[dict, Path, Path]:
    """One head exported per engine x precision: the first on the encoder's own model, the others on variants
    of the same ``model.onnx`` rendered for their engine, each with its ensemble."""
    from headserve.export.repository import encoder_model_name

    spec = under.spec
    artifact = built.example_head(spec, "h", engine="onnxruntime", precision="fp32")
    heads = {pairs[0]: "h"}
    for engine, precision in pairs[1:]:
        suffix = f"{engine}_{precision}"
        model = built.encoder_variant(spec, suffix, parameters={"engine": engine, "precision": precision},
                                      engine=engine, engine_precision=precision)
        heads[(engine, precision)] = built.head_on("h", model, suffix)
    return heads, built.repo / encoder_model_name(spec.name) / "1" / "model.onnx", artifact


# ---------------------------------------------------------------------------------------------
# Report


def _ceiling_lines(ceilings: dict[str, Measured], config: EngineBenchConfig) -> list[str]:
    return [f"Matrix-multiply ceilings ({config.gemm_size}x{config.gemm_size}, GFLOP/s, best round [each round's "
            f"median, min]): fp32 (ONNX Runtime MLAS) {max(ceilings['fp32'].rates):.0f} [{ceilings['fp32'].median:.0f}, "
            f"{min(ceilings['fp32'].rates):.0f}], bf16 (OpenVINO oneDNN) {max(ceilings['bf16'].rates):.0f} "
            f"[{ceilings['bf16'].median:.0f}, {min(ceilings['bf16'].rates):.0f}]. % of ceiling is against the best "
            "round.", ""]


def _encoder_lines(encoder: str, measured: dict, ceilings: dict[str, Measured], pairs: list[tuple[str, str]]) -> list[str]:
    gflop, rates, figures = measured["gflop"], measured["rates"], measured["figures"]
    lines = [f"### {encoder} ({gflop:.2f} GFLOP per image)", "",
             "| engine | measurement | images/s | GFLOP/s | % of ceiling | min cosine | top-1 agreement |",
             "|---|---|---|---|---|---|---|"]
    for engine, precision in pairs:
        name = f"{engine} {precision}"
        fig = figures[name]
        ceiling = max(ceilings[precision].rates)  # a ceiling: the best round, the least disturbed
        for what in ("in-process b32", "served b32 c2", "served b1 c16", "extraction"):
            torch_side = engine == "onnxruntime" and what == "extraction"  # training before engines
            r = rates["torch eager fp32 extraction" if torch_side else f"{name} {what}"]
            label = "extraction (eager PyTorch fp32, what it serves)" if torch_side else what
            lines.append(f"| {name} | {label} | {r.cell()} | {r.median * gflop:.0f} | "
                         f"{100 * r.median * gflop / ceiling:.0f}% | {fig['min_cosine']:.5f} | "
                         f"{fig['top1_agreement']:.3f} |")
    lines += [""] + _ratio_lines(rates, pairs) + [""]
    return lines


def _ratio_lines(rates: dict[str, Measured], pairs: list[tuple[str, str]]) -> list[str]:
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
