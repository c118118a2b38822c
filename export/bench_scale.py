"""Serving benchmark of real-size encoders: PyTorch, ONNX Runtime and the served ensemble side by side.

Each encoder is its real architecture with random weights (``headserve.standins``: same compute as
the trained model). In one run, on one machine, with one thread budget (this machine's cores):

- PyTorch eager, one crop at a time and batch 32 (what a user would write instead of a server);
- ONNX Runtime in-process at batch 32 on the exported ``model.onnx`` (the ceiling of the served path);
- the served ensemble over gRPC on the local tritonserver: batch 32 at concurrency 1 and 2; batch 1 at
  concurrency 16 with dynamic batching on and off; 4 heads through the multi-head ensemble against 1;
  the encoder fed uint8 against fp32 pixels; one instance with every core against one instance per core.

Configurations are measured in interleaved rounds, so a slow moment of the machine falls on all of them;
each figure is the median over rounds with the [min, max] range. The server's CPU use is its process
group's CPU time over the wall time of the measurement. Numbers are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from headserve.contract import PIXELS

SERVE_MODES = ("served b32 c1", "served b32 c2", "served b1 c16 batching on", "served b1 c16 batching off",
               "served 4 heads b32 c1", "encoder uint8 b32", "encoder fp32 b32",
               "served instance per core b32 c2", "served instance per core b1 c16")


@dataclass(frozen=True)
class ScaleConfig:
    """What the benchmark measures and how long it spends on each configuration."""

    encoders: tuple[str, ...] = ("clip:ViT-B-32", "dinov3:vits16")  # real architectures, random weights
    batch: int = 32  # crops per request of the batched modes
    rounds: int = 3  # interleaved rounds: the median and range are over these
    requests: int = 3  # batch requests per configuration and round (per client)
    single_requests: int = 64  # batch-1 requests per round in the concurrency-16 modes
    concurrency: int = 16  # clients of the batch-1 modes
    heads: int = 4  # heads of the multi-head ensemble
    weights_dir: Path = Path(".headserve-cache/standins")  # where the random-weight checkpoints are kept
    smoke: bool = False  # tiny twins and one short round: checks that the benchmark runs, measures nothing real


SMOKE = ScaleConfig(encoders=("clip:tiny",), rounds=1, requests=1, single_requests=16, concurrency=4)


@dataclass
class Measured:
    """Samples of one configuration: images per second per round, latencies, server CPU cores."""

    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)

    def cell(self) -> str:
        if not self.rates:
            return "-"
        med = statistics.median(self.rates)
        return f"{med:.1f} [{min(self.rates):.1f}, {max(self.rates):.1f}]" if len(self.rates) > 1 else f"{med:.1f}"

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


def run(out: Path, config: ScaleConfig | None = None) -> list[str]:
    config = config or ScaleConfig()
    lines = ["## Serving real-size encoders (`headserve.export.bench_scale`)", "",
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


def smoke(out: Path) -> list[str]:
    return run(out, SMOKE)


# ---------------------------------------------------------------------------------------------
# One encoder: repository with its variants, then interleaved rounds.


def _bench_encoder(encoder: str, config: ScaleConfig) -> dict[str, Measured]:
    import torch

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.server import LocalTriton, ServerConfig

    spec = get_encoder(encoder)
    if not spec.is_tiny:
        from headserve.standins import write_random_weights

        spec = write_random_weights(encoder, config.weights_dir)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    graph = encoder_graph(load_encoder(spec))
    size = spec.preprocess.input_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (config.batch, size, size, 3), dtype=np.uint8)
    results = {name: Measured() for name in ("torch eager b1", "torch eager b32", "onnxruntime b32") + SERVE_MODES}
    with tempfile.TemporaryDirectory(prefix="headserve-scale-") as tmp:
        repo, names = _repository(Path(tmp), spec, graph, config)
        ort_session = _ort_session(repo / names["encoder"] / "1", cores)
        with LocalTriton(ServerConfig(repository=repo, startup_timeout_s=600)) as server:
            measure = _Server(server, pixels)
            measure.warm(names)
            for r in range(config.rounds):
                print(f"    round {r + 1}/{config.rounds}", flush=True)
                results["torch eager b1"].rates.append(_torch_rate(graph, pixels, batch=1))
                results["torch eager b32"].rates.append(_torch_rate(graph, pixels, batch=config.batch))
                results["onnxruntime b32"].rates.append(_ort_rate(ort_session, pixels, config.requests))
                for mode in SERVE_MODES:
                    measure.mode(mode, names, config, results[mode])
    return results


def _repository(root: Path, spec, graph, config: ScaleConfig) -> tuple[Path, dict[str, str]]:
    """The encoder, ``config.heads`` heads with their ensembles and a multi-head ensemble, plus the
    encoder's variants (no dynamic batching, fp32 pixels, one instance per core) each with a head."""
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.model_config import DataType, Runtime, RuntimeOptions, parameters_of, parse
    from headserve.export.multi_head import write_multi_head_ensemble
    from headserve.export.onnx_export import EncoderExport, encoder_graph_spec, export_onnx
    from headserve.export.pipeline import export_head
    from headserve.export.repository import (
        encoder_desc,
        encoder_model_name,
        publish_version,
        read_served_head,
        write_ensemble,
    )

    repo = root / "repo"
    heads = [f"h{i}" for i in range(config.heads)]
    for i, head in enumerate(heads):
        export_head(write_example_head(spec, ExampleHead(head, seed=i), root / head), repo, "local")
    multi = write_multi_head_ensemble(repo, heads, "local").name
    base = encoder_model_name(spec.name)
    version = repo / base / "1"
    params = parameters_of(parse((repo / base / "config.pbtxt").read_text()))
    files = {p.name: p for p in version.iterdir() if p.is_file() and p.name != "model.py"}  # graph, weights, fingerprint
    variants = {
        "nobatch": (encoder_desc(f"{base}_nobatch", spec, params, dynamic_batching=False), files, None),
        "percore": (encoder_desc(f"{base}_percore", spec, params), files,
                    RuntimeOptions(instances=os.cpu_count() or 1, cpu_threads=1)),
    }
    fp32_dir = root / "fp32in"
    fp32_dir.mkdir()
    float_spec = replace(encoder_graph_spec(spec.name, spec.preprocess.input_size),
                         make_inputs=_float_pixels(spec.preprocess.input_size))
    export_onnx(EncoderExport(graph).eval(), float_spec, fp32_dir / "model.onnx")
    variants["fp32in"] = (encoder_desc(f"{base}_fp32in", spec, params, input_dtype=DataType.TYPE_FP32),
                          {p.name: p for p in fp32_dir.iterdir()}, None)
    for suffix, (desc, variant_files, options) in variants.items():
        publish_version(repo / desc.name, desc, Runtime.LOCAL, variant_files, options=options)
    for suffix in ("nobatch", "percore"):
        write_ensemble(repo, replace(read_served_head(repo, "h0", "a benchmark variant")[0], name=f"h0_{suffix}"),
                       f"{base}_{suffix}", "h0_head", Runtime.LOCAL)
    names = {"encoder": base, "head": "h0", "multi": multi, "nobatch": "h0_nobatch", "percore": "h0_percore",
             "fp32in": f"{base}_fp32in"}
    return repo, names


def _float_pixels(size: int) -> Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]:
    def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32),)

    return inputs


# ---------------------------------------------------------------------------------------------
# In-process sides.


def _torch_rate(graph, pixels: np.ndarray, batch: int) -> float:
    import torch

    x = torch.from_numpy(pixels)
    with torch.inference_mode():
        graph(x[:batch])  # warm
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            graph(x[i:i + batch])
        return len(x) / (time.perf_counter() - t0)


def _ort_session(version_dir: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(version_dir / "model.onnx"), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _ort_rate(session, pixels: np.ndarray, requests: int) -> float:
    session.run(None, {PIXELS: pixels[:1]})  # warm
    t0 = time.perf_counter()
    for _ in range(requests):
        session.run(None, {PIXELS: pixels})
    return requests * len(pixels) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Served side.


def server_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in the server's process group: tritonserver and its
    python-backend stubs. Linux ``/proc``; 0 elsewhere."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


class _Server:
    """Requests against the running server, timed, with its CPU use."""

    def __init__(self, server, pixels: np.ndarray) -> None:
        self.url = server.grpc_url
        self.pgid = server.process.pid
        self.pixels = pixels

    def warm(self, names: dict[str, str]) -> None:
        for model in (names["head"], names["multi"], names["nobatch"], names["percore"]):
            self._call(model, self.pixels)
        self._call(names["fp32in"], self.pixels.astype(np.float32))

    def _call(self, model: str, pixels: np.ndarray, client=None) -> float:
        import tritonclient.grpc as grpcclient

        own = client is None
        client = client or grpcclient.InferenceServerClient(self.url)
        try:
            inp = grpcclient.InferInput(PIXELS, list(pixels.shape), "UINT8" if pixels.dtype == np.uint8 else "FP32")
            inp.set_data_from_numpy(pixels)
            t0 = time.perf_counter()
            client.infer(model, [inp])
            return time.perf_counter() - t0
        finally:
            if own:
                client.close()

    def _load(self, model: str, pixels: np.ndarray, clients: int, requests: int, into: "Measured") -> None:
        """``clients`` threads, each sending ``requests`` requests of ``pixels``; rate, latencies, cores."""
        import tritonclient.grpc as grpcclient

        latencies: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(clients + 1)

        def worker() -> None:
            with grpcclient.InferenceServerClient(self.url) as client:
                start.wait()
                for _ in range(requests):
                    s = self._call(model, pixels, client)
                    with lock:
                        latencies.append(s * 1000)

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        cpu0, t0 = server_cpu_seconds(self.pgid), time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        into.rates.append(clients * requests * len(pixels) / wall)
        into.latencies_ms.extend(latencies)
        into.cores.append((server_cpu_seconds(self.pgid) - cpu0) / wall)

    def mode(self, mode: str, names: dict[str, str], config: ScaleConfig, into: Measured) -> None:
        one = self.pixels[:1]
        per_client = max(1, config.single_requests // config.concurrency)
        plan = {
            "served b32 c1": (names["head"], self.pixels, 1, config.requests),
            "served b32 c2": (names["head"], self.pixels, 2, config.requests),
            "served b1 c16 batching on": (names["head"], one, config.concurrency, per_client),
            "served b1 c16 batching off": (names["nobatch"], one, config.concurrency, per_client),
            "served 4 heads b32 c1": (names["multi"], self.pixels, 1, config.requests),
            "encoder uint8 b32": (names["encoder"], self.pixels, 1, config.requests),
            "encoder fp32 b32": (names["fp32in"], self.pixels.astype(np.float32), 1, config.requests),
            "served instance per core b32 c2": (names["percore"], self.pixels, 2, config.requests),
            "served instance per core b1 c16": (names["percore"], one, config.concurrency, per_client),
        }
        self._load(*plan[mode], into=into)


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
