"""Encoders and heads to ONNX, each export checked against PyTorch before it is kept.

One small ``GraphSpec`` per kind of graph declares its data (tensor names, dynamic axes, the random
inputs the parity check feeds). Every ONNX input and output is named here (``pixels``, ``embedding``,
``logits``, ``probs``); generated names never reach a ``config.pbtxt``.

We use the TorchScript-based exporter (``dynamo=False``): it traces open_clip's and transformers'
ViTs (DINOv3's RoPE included) with a dynamic batch axis and needs no onnxscript; opset 17 is the
first with a native LayerNormalization, which keeps the head graphs small and exact.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import torch
from torch import nn

from headserve.contract import BOXES, EMBEDDING, HEAD_FEED, LOGITS, PIXELS, PROBS, REGION_PIXELS, EncoderIdentity
from headserve.errors import ExportParityError
from headserve.regions import RegionSpec

if TYPE_CHECKING:
    from headserve.backbones import LoadedEncoder

OPSET = 17
# Max |ONNX - fp32 PyTorch| allowed on the L2-normalised embedding, per encoder precision. fp16 is
# refused beyond its tolerance or on any NaN (DINOv3 has been reported to overflow in fp16).
PRECISION_ATOL: dict[str, float] = {"fp32": 1e-5, "fp16": 5e-3}
# float16 graphs are served at ONNX Runtime's "extended" level: the CPU-only layout optimisations of
# "all" crash session creation on fp16 CLIP graphs (onnxruntime 1.31), and they bring nothing on GPUs.
PRECISION_ORT_LEVEL: dict[str, str] = {"fp32": "all", "fp16": "extended"}
# Graphs whose weights exceed this many bytes keep them as ONNX external data next to the model file
# (protobuf caps one file at 2 GiB; ViT-L in fp32 is 1.2 GB and grows with every constant folded in).
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass(frozen=True)
class GraphSpec:
    """What an exported graph takes and gives."""

    name: str  # used in messages
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    make_inputs: Callable[[int, np.random.Generator], tuple[np.ndarray, ...]]  # batch -> example inputs
    atol: float = 1e-5  # max |ONNX - PyTorch| allowed per output (plus its rtol share, where it has one)
    ort_level: str = "all"  # ONNX Runtime graph optimisation level serving uses: "all" or "extended"
    # output -> |ONNX - PyTorch| allowed per unit of that output's rounding scale (from `scales`), on top of atol
    rtol: Mapping[str, float] = field(default_factory=dict)
    # (reference module, inputs) -> output -> the scale its float32 rounding grows with, shaped as the output
    scales: Callable[[nn.Module, tuple[torch.Tensor, ...]], Mapping[str, torch.Tensor]] | None = None
    argmax: str | None = None  # output whose top entry per row must be PyTorch's wherever its top two differ by > atol
    # tensor -> {axis: name} of its dynamic axes; None: axis 0 of every input and output is the shared "batch"
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None


def encoder_graph_spec(name: str, input_size: int) -> GraphSpec:
    def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (rng.integers(0, 256, size=(batch, input_size, input_size, 3), dtype=np.uint8),)

    # HEAD_FEED: the embedding's second copy, which feeds the heads (see headserve.contract)
    return GraphSpec(name, (PIXELS,), (EMBEDDING, HEAD_FEED), inputs, atol=1e-5)


class EncoderExport(nn.Module):
    """The exported encoder: one embedding, published under both of its ensemble roles."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, S, S, 3) -> 2 x (B, D)
        emb = self.graph(pixels)
        return emb, emb.clone()


class Fp16EncoderExport(nn.Module):
    """An encoder computed in float16 (preprocessing, backbone, normalisation) that still emits float32.

    The ensemble contract does not change with precision: heads and clients see FP32 ``embedding``.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph.half()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, S, S, 3) -> 2 x (B, D)
        emb = self.graph(pixels).float()
        return emb, emb.clone()


def encoder_export(graph: nn.Module, precision: str) -> nn.Module:
    """The module to export for ``precision`` ("fp32" or "fp16"); the fp32 ``graph`` stays untouched."""
    import copy

    if precision not in PRECISION_ATOL:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISION_ATOL)}")
    return EncoderExport(graph) if precision == "fp32" else Fp16EncoderExport(copy.deepcopy(graph))


def parity_boxes(count: int, resolution: int, patch_size: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 4) float32 frame boxes that exercise the pooling: the whole frame, one inside a single patch,
    one past the bottom-right edge (the graph clips it), then random boxes of every size."""
    fixed = [[0.0, 0.0, resolution, resolution],
             [patch_size + 1.5, patch_size + 2.0, patch_size + 3.25, patch_size + 5.0],
             [resolution - 1.5 * patch_size, resolution - patch_size, resolution + 9.0, resolution + 3.0]]
    xy = rng.uniform(0, resolution - 1, size=(count, 2))
    wh = rng.uniform(0.5, resolution, size=(count, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, resolution)], axis=1)
    n = min(count, len(fixed))
    boxes[:n] = np.asarray(fixed[:n], dtype=np.float64).reshape(n, 4)
    return boxes.astype(np.float32)


def region_graph_spec(name: str, region: RegionSpec) -> GraphSpec:
    """A region encoder: one letterboxed image and K boxes -> K embeddings (both roles); K is the dynamic axis.

    The parity check's "batch" is the box count; the image is fixed at (1, R, R, 3).
    """
    def inputs(boxes: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        pixels = rng.integers(0, 256, size=(1, region.resolution, region.resolution, 3), dtype=np.uint8)
        return pixels, parity_boxes(boxes, region.resolution, region.patch_size, rng)

    axes = {BOXES: {0: "boxes"}, EMBEDDING: {0: "boxes"}, HEAD_FEED: {0: "boxes"}}
    return GraphSpec(name, (REGION_PIXELS, BOXES), (EMBEDDING, HEAD_FEED), inputs, atol=1e-5, dynamic_axes=axes)


class RegionEncoderExport(nn.Module):
    """The exported region encoder: the K box embeddings, published under both of their ensemble roles."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.graph(pixels, boxes)  # (1, R, R, 3), (K, 4) -> (K, D)
        return emb, emb.clone()


@dataclass(frozen=True)
class RegionEncoderFile:
    """A region encoder written to ONNX and checked against PyTorch."""

    path: Path  # the model.onnx written
    identity: EncoderIdentity  # what its parameters publish: family, model, width, fingerprint, region spec
    diffs: dict[str, float]  # output -> max |ONNX - PyTorch| over the parity inputs


def export_region_encoder(loaded: "LoadedEncoder", region: RegionSpec, path: str | os.PathLike,
                          external_data_bytes: int = EXTERNAL_DATA_BYTES) -> RegionEncoderFile:
    """Write ``loaded``'s region encoder (``region``'s resolution and pooling) to ``path``, fp32, after checking
    it against PyTorch over 1, 3 and 8 boxes; ``ExportParityError`` (nothing written) when it is not exact.

    ``region_spec_for(loaded)`` gives the default spec. The identity's fingerprint covers the region spec.
    """
    from headserve.backbones import fingerprint, region_graph

    graph = region_graph(loaded, region)
    diffs = export_onnx(RegionEncoderExport(graph), region_graph_spec(f"{loaded.spec.name} ({region.label})", region),
                        path, external_data_bytes=external_data_bytes)
    identity = EncoderIdentity.from_spec(loaded.spec, fingerprint(graph, loaded.spec.preprocess, region), region)
    return RegionEncoderFile(Path(path), identity, diffs)


# Tolerances of a head graph against PyTorch. Probabilities and the OOD score are what users put thresholds
# on, and both are bounded in scale (probs in [0, 1], ood_score near 1 by its log), so they keep the absolute
# 1e-5; the top class must also be PyTorch's wherever its top two probabilities are further apart than that.
# Logits are sums of products (the last layer's sum_i w_ci f_i + b_c): float32 rounding of such a sum grows
# with sum_i |w_ci f_i| (the classifier's `magnitude`), not with the logit, and ONNX Runtime adds in another
# order than PyTorch. A logistic regression on standardised embeddings (C up to 1000) has logits in the
# hundreds, where one float32 ulp is already 1.5e-5, so an absolute 1e-5 refused exact graphs. A logit may
# therefore differ by 1e-5 + HEAD_LOGITS_RTOL * its magnitude: 1e-5 relative is about 80 ulps of the terms'
# scale. Exact graphs at real widths (1024-d logreg with logits up to 442, a 1024-768-384 GELU+LN MLP, ArcFace)
# used at most 2.3% of it on 256 random embeddings, while a weight off by 0.1%, a shifted bias, swapped
# classes or another temperature still fail (tests/unit/test_export_parity.py).
HEAD_ATOL = 1e-5
HEAD_LOGITS_RTOL = 1e-5


def _head_scales(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Mapping[str, torch.Tensor]:
    return {LOGITS: module.logit_magnitude(*inputs)}


def head_graph_spec(name: str, embedding_dim: int, outputs: tuple[str, ...]) -> GraphSpec:
    """A head graph (embedding -> ``outputs``) with the tolerances above; the module must be a ``ServingHead``."""
    def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        x = rng.standard_normal((batch, embedding_dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True),)  # heads see L2-normalised embeddings

    return GraphSpec(name, (EMBEDDING,), outputs, inputs, atol=HEAD_ATOL, rtol={LOGITS: HEAD_LOGITS_RTOL},
                     scales=_head_scales, argmax=PROBS if PROBS in outputs else None)


def _ort_levels() -> dict:
    import onnxruntime as ort

    return {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


class _Levels(dict):
    """ONNX Runtime's level enum by name, resolved on first use (onnxruntime imports lazily here)."""

    def __missing__(self, key: str):
        self.update(_ort_levels())
        return dict.__getitem__(self, key)


ORT_LEVELS = _Levels()


def export_onnx(module: nn.Module, spec: GraphSpec, path: str | os.PathLike, seed: int = 0,
                reference: nn.Module | None = None, error: type[ExportParityError] = ExportParityError,
                external_data_bytes: int = EXTERNAL_DATA_BYTES) -> dict[str, float]:
    """Export ``module`` to ``path`` (atomically), after checking it against PyTorch.

    ``reference`` (default: ``module`` itself) is what the ONNX graph must reproduce, e.g. the fp32
    encoder for an fp16 export. Returns each output's max absolute difference. Raises ``error`` (and
    writes nothing) when any output leaves its tolerance (``spec``'s atol, rtol and argmax) or is not
    finite. Weights larger than ``external_data_bytes`` are written to ``<path>.data`` beside the model file.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    rng = np.random.default_rng(seed)
    example = tuple(torch.from_numpy(a) for a in spec.make_inputs(2, rng))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        # nn.MultiheadAttention's inference fast path (open_clip's ViT) is a fused op with no ONNX
        # symbolic; the regular path computes the same attention from exportable ops.
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
                torch.onnx.export(
                    module,
                    example,
                    str(tmp),
                    input_names=list(spec.inputs),
                    output_names=list(spec.outputs),
                    dynamic_axes=({n: dict(a) for n, a in spec.dynamic_axes.items()} if spec.dynamic_axes is not None
                                  else {n: {0: "batch"} for n in (*spec.inputs, *spec.outputs)}),
                    opset_version=OPSET,
                    dynamo=False,
                )
        finally:  # a failed export must not leave the process's attention on the slow path
            torch.backends.mha.set_fastpath_enabled(fastpath)
        data = path.with_name(path.name + ".data")
        _externalise(tmp, data.name, external_data_bytes)
        onnx.checker.check_model(str(tmp), full_check=True)
        checked = parity(reference if reference is not None else module, tmp, spec, rng)
        if checked.failed:
            raise error(spec.name, checked.diffs, spec.atol, checked.failed)
        tmp.replace(path)
        return checked.diffs
    finally:
        if tmp.exists():  # not published: drop the graph and any weights written beside it
            tmp.unlink()
            path.with_name(path.name + ".data").unlink(missing_ok=True)


def _externalise(model_path: Path, data_name: str, threshold: int) -> None:
    """Rewrite ``model_path`` with its weights in ``data_name`` (same directory) when they exceed ``threshold``.

    The data file is written under its final name, so renaming the model file afterwards keeps the
    reference valid; a failed export leaves it behind in the staging directory only.
    """
    import onnx

    model = onnx.load(str(model_path))
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size <= threshold:
        return
    onnx.save_model(model, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


@dataclass(frozen=True)
class Parity:
    """How an ONNX graph compares with PyTorch over the parity inputs."""

    diffs: dict[str, float]  # output -> max |ONNX - PyTorch| (NaN when either side was not finite)
    failed: dict[str, str]  # output -> how it broke its tolerance; empty when the graph passes


def parity(module: nn.Module, onnx_path: str | os.PathLike, spec: GraphSpec,
           rng: np.random.Generator, batches: tuple[int, ...] = (1, 3, 8)) -> Parity:
    """Every output of ONNX Runtime against PyTorch over random inputs of several batch sizes, by ``spec``'s
    tolerances: ``|diff| <= atol + rtol * scale`` element-wise, all finite, and the same argmax where it is clear."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ORT_LEVELS[spec.ort_level]
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    worst = {name: 0.0 for name in spec.outputs}
    failed: dict[str, str] = {}
    for batch in batches:
        inputs = spec.make_inputs(batch, rng)
        tensors = tuple(torch.from_numpy(a) for a in inputs)
        with torch.no_grad():
            expected = module(*tensors)
            scales = spec.scales(module, tensors) if spec.scales is not None else {}
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = session.run(list(spec.outputs), dict(zip(spec.inputs, inputs)))
        for name, e, g in zip(spec.outputs, expected, got):
            want = e.numpy().astype(np.float64)
            if not g.size:
                continue
            if not np.isfinite(want).all():
                worst[name] = float("nan")
                failed.setdefault(name, "PyTorch's own output is not finite: the weights or statistics hold NaN "
                                        "or inf, so there is nothing to serve; retrain the model")
                continue
            diff = np.abs(want - g.astype(np.float64))
            if not np.isfinite(diff).all():
                worst[name] = float("nan")
                failed.setdefault(name, "ONNX Runtime's output is not finite where PyTorch's is")
                continue
            worst[name] = max(worst[name], float(diff.max()))
            allowed = spec.atol + spec.rtol.get(name, 0.0) * (
                scales[name].numpy().astype(np.float64) if name in scales else 0.0)
            over = diff / allowed
            if over.max() > 1.0:
                at = np.unravel_index(np.argmax(over), over.shape)
                failed.setdefault(name, f"|diff| {diff[at]:.3g} at {tuple(int(i) for i in at)} where "
                                        f"{np.broadcast_to(allowed, diff.shape)[at]:.3g} is allowed")
            if name == spec.argmax and want.ndim == 2 and want.shape[1] > 1:
                top2 = np.sort(want, axis=1)[:, -2:]
                clear = top2[:, 1] - top2[:, 0] > spec.atol  # rows whose top entry is not a tie within tolerance
                moved = clear & (np.argmax(want, axis=1) != np.argmax(g, axis=1))
                if moved.any():
                    failed[f"argmax({name})"] = (f"the top entry differs in {int(moved.sum())} of {len(want)} rows "
                                                 f"of batch {batch}")
    return Parity(worst, failed)
