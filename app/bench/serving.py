"""Serving benchmark of real-size encoders (``headserve.app.bench.serving``): PyTorch, ONNX Runtime and the
served ensemble side by side.

Each encoder is its real architecture with random weights (``headserve.standins``: same compute as
the trained model). In one run, on one machine, with one thread budget (this machine's cores):

- PyTorch eager, one crop at a time and batch 32 (what a user would write instead of a server);
- ONNX Runtime in-process at batch 32 on the exported ``model.onnx`` (the ceiling of the served path);
- the served ensemble over gRPC on the local tritonserver: batch 32 at concurrency 1 and 2; batch 1 at
  concurrency 16 with dynamic batching on and off; 4 heads through the multi-head ensemble against 1;
  the encoder fed uint8 against fp32 pixels; one instance with every core against one instance per core.

Configurations are measured in interleaved rounds, so a slow moment of the machine falls on all of them;
each figure is the median over rounds with the [min, max] range. The server's CPU use is its session's
CPU time (tritonserver and its stubs) over the wall time of the measurement. Numbers are reported, never
asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from headserve.app.bench.repository import SMOKE_ROUNDS, BenchRepository, EncoderRounds, EncoderUnderTest
from headserve.app.bench.timing import Load, Measured, in_process_rate, interleaved_rounds, session_cpu_seconds, triton_load
from headserve.contract import PIXELS

SERVE_MODES = ("served b32 c1", "served b32 c2", "served b1 c16 batching on", "served b1 c16 batching off",
               "served 4 heads b32 c1", "encoder uint8 b32", "encoder fp32 b32",
               "served instance per core b32 c2", "served instance per core b1 c16")


@dataclass(frozen=True)
class ScaleConfig(EncoderRounds):
    """What the benchmark measures and how long it spends on each configuration."""

    heads: int = 4  # heads of the multi-head ensemble


SMOKE = ScaleConfig(**SMOKE_ROUNDS)


def run(out: Path, smoke: bool = False, config: ScaleConfig | None = None) -> list[str]:
    config = config or (SMOKE if smoke else ScaleConfig())
    lines = ["## Serving real-size encoders (`headserve.app.bench.serving`)", "",
             f"Random-weight stand-ins of the real architectures, {os.cpu_count()} cores for every side "
             "(torch threads, ONNX Runtime intra-op threads, the served encoder's threads). "
             "Images/s, median over interleaved rounds [min, max].", ""]
    results: dict[str, dict[str, Measured]] = {}
    for encoder in config.encoders:
        print(f"  {encoder}: building, exporting and serving ...", flush=True)
        results[encoder] = _bench_encoder(encoder, config)
    lines += _table(results) + [""] + _ratios(results) + [""]
    _plot(results, out / "scale_serving.png")
    (out / "scale_serving.json").write_text(json.dumps(
        {e: {m: vars(v) for m, v in r.items()} for e, r in results.items()}, indent=1) + "\n")
    return lines + [f"Plot: `{out / 'scale_serving.png'}`.", ""]


# ---------------------------------------------------------------------------------------------
# One encoder: repository with its variants, then interleaved rounds.


def _bench_encoder(encoder: str, config: ScaleConfig) -> dict[str, Measured]:
    under = EncoderUnderTest.load(encoder, config.batch, config.weights_dir)
    graph, pixels = under.graph, under.pixels
    with tempfile.TemporaryDirectory(prefix="headserve-scale-") as tmp:
        built = BenchRepository(Path(tmp))
        names = _repository(built, under, config)
        ort_session = _ort_session(built.repo / names["encoder"] / "1", os.cpu_count() or 1)
        with built.serve(startup_timeout_s=600) as server:
            assert server.process is not None
            served = _served_modes(server.grpc_url, server.process.pid, names, pixels, config)
            for model in (names["head"], names["multi"], names["nobatch"], names["percore"]):  # warm
                triton_load(server.grpc_url, model, pixels, 1, 1)
            triton_load(server.grpc_url, names["fp32in"], pixels.astype(np.float32), 1, 1)
            return interleaved_rounds(config.rounds, {
                "torch eager b1": lambda: _torch_rate(graph, pixels, batch=1),
                "torch eager b32": lambda: _torch_rate(graph, pixels, batch=config.batch),
                "onnxruntime b32": lambda: in_process_rate(lambda x: ort_session.run(None, {PIXELS: x}), pixels,
                                                           config.requests),
                **served,
            })


def _repository(built: BenchRepository, under: EncoderUnderTest, config: ScaleConfig) -> dict[str, str]:
    """The encoder, ``config.heads`` heads with their ensembles and a multi-head ensemble, plus the
    encoder's variants (no dynamic batching, fp32 pixels, one instance per core), each but fp32 with a head."""
    from headserve.export.model_config import DataType, RuntimeOptions
    from headserve.export.multi_head import write_multi_head_ensemble
    from headserve.export.onnx_export import EncoderExport, encoder_graph_spec, export_onnx
    from headserve.export.repository import encoder_model_name

    spec = under.spec
    heads = [f"h{i}" for i in range(config.heads)]
    for i, head in enumerate(heads):
        built.example_head(spec, head, seed=i)
    multi = write_multi_head_ensemble(built.repo, heads, "local").name
    fp32_dir = built.root / "fp32in"
    fp32_dir.mkdir()
    float_spec = replace(encoder_graph_spec(spec.name, spec.preprocess.input_size),
                         make_inputs=_float_pixels(spec.preprocess.input_size))
    export_onnx(EncoderExport(under.graph).eval(), float_spec, fp32_dir / "model.onnx")
    nobatch = built.encoder_variant(spec, "nobatch", dynamic_batching=False)
    percore = built.encoder_variant(spec, "percore", options=RuntimeOptions(instances=os.cpu_count() or 1,
                                                                            cpu_threads=1))
    fp32in = built.encoder_variant(spec, "fp32in", files={p.name: p for p in fp32_dir.iterdir()},
                                   input_dtype=DataType.TYPE_FP32)
    return {"encoder": encoder_model_name(spec.name), "head": "h0", "multi": multi,
            "nobatch": built.head_on("h0", nobatch, "nobatch"), "percore": built.head_on("h0", percore, "percore"),
            "fp32in": fp32in}


def _float_pixels(size: int) -> Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]:
    def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32),)

    return inputs


# ---------------------------------------------------------------------------------------------
# In-process sides.


def _torch_rate(graph, pixels: np.ndarray, batch: int) -> float:
    """Eager PyTorch over the whole batch in chunks of ``batch`` crops (after one warm chunk)."""
    import torch

    x = torch.from_numpy(pixels)

    def chunks(x: torch.Tensor) -> None:
        for i in range(0, len(x), batch):
            graph(x[i:i + batch])

    with torch.inference_mode():
        return in_process_rate(chunks, x, 1, warm_with=x[:batch])


def _ort_session(version_dir: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(version_dir / "model.onnx"), sess_options=options,
                                providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Served side: each mode a threaded load, with the server session's CPU use.


def _served_modes(url: str, server_pid: int, names: dict[str, str], pixels: np.ndarray,
                  config: ScaleConfig) -> dict[str, Callable[[], Load]]:
    one, floats = pixels[:1], pixels.astype(np.float32)
    per_client = config.single_per_client
    plan = {
        "served b32 c1": (names["head"], pixels, 1, config.requests),
        "served b32 c2": (names["head"], pixels, 2, config.requests),
        "served b1 c16 batching on": (names["head"], one, config.concurrency, per_client),
        "served b1 c16 batching off": (names["nobatch"], one, config.concurrency, per_client),
        "served 4 heads b32 c1": (names["multi"], pixels, 1, config.requests),
        "encoder uint8 b32": (names["encoder"], pixels, 1, config.requests),
        "encoder fp32 b32": (names["fp32in"], floats, 1, config.requests),
        "served instance per core b32 c2": (names["percore"], pixels, 2, config.requests),
        "served instance per core b1 c16": (names["percore"], one, config.concurrency, per_client),
    }
    assert tuple(plan) == SERVE_MODES
    cpu = lambda: session_cpu_seconds(server_pid)  # noqa: E731
    return {mode: (lambda m=m, a=a, c=c, r=r: triton_load(url, m, a, c, r, probe=cpu))
            for mode, (m, a, c, r) in plan.items()}


# ---------------------------------------------------------------------------------------------
# Report.


def _table(results: dict[str, dict[str, Measured]]) -> list[str]:
    encoders = list(results)
    lines = ["| configuration | " + " | ".join(encoders) + " |", "|---|" + "---|" * len(encoders)]
    for mode in next(iter(results.values())):
        lines.append(f"| {mode} | " + " | ".join(results[e][mode].cell() for e in encoders) + " |")
    lines.append("| server CPU use, cores (b32 c2 / b1 c16 on) | " + " | ".join(
        f"{statistics.median(results[e]['served b32 c2'].cores):.2f} / "
        f"{statistics.median(results[e]['served b1 c16 batching on'].cores):.2f}" for e in encoders) + " |")
    lines.append("| p50 / p99 ms, b1 c16 batching on | " + " | ".join(
        f"{np.percentile(results[e]['served b1 c16 batching on'].latencies_ms, 50):.0f} / "
        f"{np.percentile(results[e]['served b1 c16 batching on'].latencies_ms, 99):.0f}" for e in encoders) + " |")
    return lines


RATIOS = (  # (label, numerator, denominator, target: (">=" or "<=", value))
    ("served b32 c1 / ONNX Runtime b32", "served b32 c1", "onnxruntime b32", (">=", 0.9)),
    ("served b32 c2 / ONNX Runtime b32", "served b32 c2", "onnxruntime b32", (">=", 0.9)),
    ("served b32 c2 / torch eager b1", "served b32 c2", "torch eager b1", (">=", 2.5)),
    ("4 heads / 1 head, time per crop", "served b32 c1", "served 4 heads b32 c1", ("<=", 1.1)),
    ("batching on / off, b1 c16", "served b1 c16 batching on", "served b1 c16 batching off", (">=", 1.2)),
    ("uint8 / fp32 pixels", "encoder uint8 b32", "encoder fp32 b32", None),
    ("all-core instance / instance per core, b32 c2", "served b32 c2", "served instance per core b32 c2", None),
    ("all-core instance / instance per core, b1 c16", "served b1 c16 batching on", "served instance per core b1 c16",
     None),
)


def _ratios(results: dict[str, dict[str, Measured]]) -> list[str]:
    encoders = list(results)
    lines = ["| ratio (medians) | target | " + " | ".join(encoders) + " |", "|---|---|" + "---|" * len(encoders)]
    for label, num, den, target in RATIOS:
        cells = []
        for e in encoders:
            value = results[e][num].median / results[e][den].median
            met = "" if target is None else (" ok" if (value >= target[1] if target[0] == ">=" else value <= target[1])
                                             else " **missed**")
            cells.append(f"{value:.2f}{met}")
        goal = "-" if target is None else f"{target[0]} {target[1]}"
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    return lines


def _plot(results: dict[str, dict[str, Measured]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(modes) + 1.5))
    height = 0.8 / len(results)
    for k, (encoder, measured) in enumerate(results.items()):
        y = np.arange(len(modes)) + k * height
        med = [measured[m].median for m in modes]
        lo = [med[i] - min(measured[m].rates) for i, m in enumerate(modes)]
        hi = [max(measured[m].rates) - med[i] for i, m in enumerate(modes)]
        ax.barh(y, med, height, xerr=[lo, hi], label=encoder, capsize=2)
    ax.set_yticks(np.arange(len(modes)) + 0.4 - height / 2, modes)
    ax.invert_yaxis()
    ax.set_xlabel("images/s (median, min-max over rounds)")
    ax.legend()
    ax.set_title(f"Serving real-size encoders, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
