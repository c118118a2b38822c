"""Embeddings of labelled crops through a frozen encoder, streamed with flat memory.

Each image is decoded once for all of its objects by a pool of threads (PIL releases the GIL while it
decodes and resizes), which feeds the encoder in batches on the chosen device and precision. Every
finished batch goes to the embedding cache and into a memory-mapped (N, D) float32 array on disk, so
what stays in memory is the embeddings, never the crops: a million crops at 224 px would be 150 GB of
pixels, their ViT-B embeddings 3 GB.

The crops go through ``headserve.preprocess`` (the client's own resize) and then through the same
``EncoderGraph`` that export writes to ONNX, so training sees exactly what serving will compute.
With ``engine="openvino"`` that graph is exported to ONNX as ``export encoder`` writes it and
compiled by OpenVINO at the chosen precision (export/engine.py), so a head that will be served in
bf16 is trained on the bf16 embeddings of the very model that serves it; the first batch is checked
against fp32 PyTorch with the export's parity check.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from headserve.backbones import EncoderGraph
from headserve.device import autocast, check_precision, check_supported, get_precision, resolve_device
from headserve.encoders import PreprocessSpec
from headserve.errors import ConfigError
from headserve.export.engine import ENGINES, check_parity, choose_engine, compile_graph
from headserve.preprocess import resize_for_encoder
from headserve.train.cache import EmbeddingCache
from headserve.train.decode import ImageFailed as _ImageFailed
from headserve.train.decode import decode_crops as _decode
from headserve.train.decode import grouped_by_image as _grouped


@dataclass(frozen=True)
class EmbedConfig:
    """How embeddings are computed."""

    device: str = "auto"  # auto|cpu|cuda|cuda:N|mps (auto: CUDA, then MPS, then CPU)
    precision: str = "fp32"  # fp32|bf16|fp16 autocast of the encoder; lower ones are checked against fp32
    engine: str = "torch"  # torch: eager PyTorch on `device`; openvino: the compiled model that serves (CPU)
    batch_size: int = 64  # crops per encoder call
    workers: int = 0  # decoding threads; 0: this machine's cores
    check_sample: int = 32  # crops compared against fp32 before a lower-precision run proceeds

    def __post_init__(self) -> None:
        get_precision(self.precision)  # unknown precisions fail here, with the known ones
        if self.engine not in EMBED_ENGINES:
            raise ConfigError.bad_value("engine", self.engine, f"is not one of {', '.join(EMBED_ENGINES)}")
        if self.engine == "openvino" and self.precision not in ENGINES["openvino"].precisions:
            raise ConfigError.bad_value("precision", self.precision, "OpenVINO embeds in fp32 or bf16")
        if self.engine == "openvino" and self.device not in ("auto", "cpu"):
            raise ConfigError.bad_value("device", self.device, "`engine` openvino runs on the CPU; use `device` cpu "
                                                                "or `engine` torch")
        if self.workers < 0:
            raise ConfigError.bad_value("workers", self.workers, "must be 0 (this machine's cores) or more")
        if self.batch_size < 1 or self.check_sample < 1:
            bad = "batch_size" if self.batch_size < 1 else "check_sample"
            raise ConfigError(f"batch_size {self.batch_size} and check_sample {self.check_sample} must be >= 1").about(
                bad, getattr(self, bad))


@dataclass
class Extraction:
    """Embeddings of every object whose image decoded, in the objects' order."""

    emb: np.ndarray  # (N, D) float32, memory-mapped: rows of objects whose image failed are zero
    ok: np.ndarray  # (N,) bool: the object's image decoded and its row holds an embedding
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image path, why) per undecodable image
    bad_crops: list[tuple[int, str]] = field(default_factory=list)  # (object index, why): image fine, box not
    device: str = "cpu"  # the torch device that computed them
    precision: str = "fp32"
    min_cosine: float | None = None  # lowest cosine to fp32 on the checked sample (None: nothing computed)
    seconds: float = 0.0  # wall time of the extraction, decoding included, after the encoder was built
    engine: str = "torch"  # what computed them: torch or openvino
    # of ``seconds``, the one-time fp32 comparison of the first batch (eager PyTorch on ``check_sample`` crops):
    # a fixed cost like the engine's compile, reported apart so a rate can be read for any dataset size
    check_seconds: float = 0.0


def _decoded_in_order(groups: list[tuple[Path, list[int]]], boxes: Sequence[tuple[float, float, float, float]],
                      spec: PreprocessSpec, workers: int) -> Iterator[tuple[Path, list[int], list[np.ndarray] | _ImageFailed]]:
    """Decode images on ``workers`` threads, at most 4 per worker ahead of the consumer, in order."""
    ahead = 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headserve-decode") as pool:
        pending: deque[tuple[Path, list[int], Future]] = deque()
        it = iter(groups)
        for path, idx in it:
            pending.append((path, idx, pool.submit(_decode, path, [boxes[i] for i in idx], spec)))
            if len(pending) >= ahead:
                break
        while pending:
            path, idx, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], pool.submit(_decode, nxt[0], [boxes[i] for i in nxt[1]], spec)))
            yield path, idx, fut.result()


EMBED_ENGINES = ("torch", "openvino")  # what may compute training's embeddings


class _Encoder:
    """The graph on its device and precision, with the fp32 check of the first computed batch."""

    def __init__(self, graph: EncoderGraph, config: EmbedConfig, input_size: int) -> None:
        self.engine = config.engine
        self.device = resolve_device("cpu" if config.engine == "openvino" else config.device)
        self.precision = get_precision(config.precision)
        check_supported(self.device, self.precision)
        self.graph = graph.to(self.device).eval()
        self.check_sample = config.check_sample
        self.min_cosine: float | None = None
        self.check_seconds = 0.0  # wall time of the one fp32 comparison, inside the extraction's time
        self.compiled: Callable[[np.ndarray], np.ndarray] | None = None
        if config.engine == "openvino":
            choose_engine("openvino", config.precision)  # bf16 on a CPU without it is refused, not computed in f32
            self.compiled = compile_graph(self.graph, "training's encoder", input_size, "openvino", config.precision)

    @torch.inference_mode()
    def _run(self, pixels: np.ndarray, fp32: bool = False) -> np.ndarray:  # (B, S, S, 3) uint8 -> (B, D)
        x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        if fp32:
            return self.graph(x).float().cpu().numpy()
        with autocast(self.device, self.precision):
            return self.graph(x).float().cpu().numpy()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            emb = self.compiled(pixels)
            if self.min_cosine is None:  # the export's check, on the first batch of the user's own crops
                t0 = time.perf_counter()
                sample = pixels[:self.check_sample]
                self.min_cosine = check_parity("training's encoder", self._run(sample, fp32=True), emb[:len(sample)],
                                               "openvino", self.precision.name,
                                               f"the first {len(sample)} training crops").min_cosine
                self.check_seconds = time.perf_counter() - t0
            return emb
        emb = self._run(pixels)
        if self.min_cosine is None and self.precision.name != "fp32":
            t0 = time.perf_counter()
            sample = pixels[:self.check_sample]
            self.min_cosine = check_precision(self._run(sample, fp32=True), emb[:len(sample)], self.precision,
                                              where=f"encoder on {self.device}")
            self.check_seconds = time.perf_counter() - t0
        elif self.min_cosine is None:
            self.min_cosine = 1.0
        return emb.astype(np.float32, copy=False)


def scratch_array(rows: int, dim: int, directory: Path | None) -> np.ndarray:
    """An (rows, dim) float32 array backed by an unlinked file: on disk, gone when the last view goes."""
    directory = Path(directory or tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".headserve-emb-", suffix=".npy", dir=directory)
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(rows, dim))
    finally:
        os.unlink(name)  # the mapping keeps the pages; nothing is left behind on any exit
    return array


def extract(images: Sequence[Path], boxes: Sequence[tuple[float, float, float, float]], graph: EncoderGraph,
            spec: PreprocessSpec, dim: int, config: EmbedConfig = EmbedConfig(),
            cache: EmbeddingCache | None = None, scratch: Path | None = None, progress: bool = False,
            on_done: Callable[[Sequence[int], np.ndarray | None, str | None, str], None] | None = None) -> Extraction:
    """Embed the crop ``boxes[i]`` of ``images[i]`` for every i, streaming; see the module docstring.

    ``on_done(indices, embeddings, why, kind)`` hears of each finished batch (``why`` None) and of each crop that
    failed (``embeddings`` None; ``kind`` "image" or "crop"), in order: the embeddings store writes its shards
    from it as they complete."""
    encoder = _Encoder(graph, config, spec.input_size)  # OpenVINO compiles here, once, before the clock starts
    t0 = time.perf_counter()
    workers = config.workers or os.cpu_count() or 1
    out = scratch_array(len(images), dim, scratch)
    ok = np.zeros(len(images), dtype=bool)
    failures: list[tuple[str, str]] = []
    bad_crops: list[tuple[int, str]] = []
    groups = _grouped(images)
    bar = None
    if progress and groups:
        from tqdm import tqdm

        bar = tqdm(total=len(images), desc="embedding", unit="crop")
    batch_idx: list[int] = []
    batch_px: list[np.ndarray] = []

    def flush() -> None:
        if not batch_idx:
            return
        pixels = np.stack(batch_px)  # (B, S, S, 3) uint8
        if cache is not None:
            emb = cache.embed(pixels, encoder, batch_size=len(pixels))
        else:
            emb = encoder(pixels)
        out[batch_idx] = emb
        ok[batch_idx] = True
        if on_done is not None:
            on_done(list(batch_idx), emb, None, "")
        if bar is not None:
            bar.update(len(batch_idx))
        batch_idx.clear()
        batch_px.clear()

    for path, idx, result in _decoded_in_order(groups, boxes, spec, workers):
        if isinstance(result, _ImageFailed):
            failures.append((str(path), str(result)))
            if on_done is not None:
                on_done(idx, None, str(result), "image")
            if bar is not None:
                bar.update(len(idx))
            continue
        for i, px in zip(idx, result):
            if isinstance(px, _ImageFailed):
                bad_crops.append((i, str(px)))
                if on_done is not None:
                    on_done([i], None, str(px), "crop")
                if bar is not None:
                    bar.update(1)
                continue
            batch_idx.append(i)
            batch_px.append(px)
            if len(batch_idx) >= config.batch_size:
                flush()
    flush()
    if bar is not None:
        bar.close()
    return Extraction(out, ok, failures, bad_crops, str(encoder.device), encoder.precision.name,
                      encoder.min_cosine, time.perf_counter() - t0, encoder.engine, encoder.check_seconds)


# ---------------------------------------------------------------------------------------------
# In-memory helpers for callers that already hold crops (the demo's parity check, benchmarks).


@torch.inference_mode()
def embed_pixels(graph: EncoderGraph, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, D) float32 L2-normalised embeddings, on the graph's device."""
    device = next(graph.parameters()).device
    out = [graph(torch.from_numpy(pixels[i:i + batch_size]).to(device)).float().cpu().numpy()
           for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out).astype(np.float32)


def pixels_of(crops: Iterable[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Resize crops by the encoder's rule into one uint8 batch."""
    return np.stack([resize_for_encoder(c, spec) for c in crops])


def embed_crops(graph: EncoderGraph, crops: Sequence[Image.Image], spec: PreprocessSpec,
                batch_size: int = 64) -> np.ndarray:
    return embed_pixels(graph, pixels_of(crops, spec), batch_size)
