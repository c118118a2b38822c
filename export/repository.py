"""A Triton model repository of encoders, heads and the ensembles that chain them.

Per encoder: ``encoder_<slug>`` (uint8 pixels -> embedding). Per head: ``<head>_head`` (embedding ->
logits, calibrated probabilities) and the ensemble ``<head>`` (pixels -> everything), which is the
name clients call. Metadata a client needs (classes, background classes, encoder type, input spec)
is published as ensemble parameters and a labels file, so a caller passes only the head name.

Version directories are staged beside their final place and renamed in, and ``config.pbtxt`` files
are replaced atomically, so a polling Triton never reads half a model.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tritonclient.grpc.model_config_pb2 import ModelConfig

from headserve.artifact import HeadMeta, check_encoder_match
from headserve.backbones import LoadedEncoder, encoder_graph, fingerprint
from headserve.encoders import EncoderSpec
from headserve.errors import ExportParityError, RepositoryError
from headserve.export.errors import Fp16ParityError
from headserve.export.fingerprint_file import FINGERPRINT_FILE, fingerprint_bytes
from headserve.export.model_config import (
    DataType,
    EnsembleStep,
    ModelDesc,
    ProductionOptions,
    Runtime,
    TensorSpec,
    parameters_of,
    parse,
    render,
    to_text,
)
from headserve.export.onnx_export import (
    ENCODER_HEAD_FEED,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    EXTERNAL_DATA_BYTES,
    HEAD_INPUT,
    PRECISION_ATOL,
    PRECISION_ORT_LEVEL,
    EncoderExport,
    encoder_export,
    encoder_graph_spec,
    export_onnx,
    head_graph_spec,
)
from headserve.fsutil import publish_dir, staging_dir, write_text_atomic
from headserve.lockfile import repository_lock
from headserve.head import SERVING_OUTPUT_WIDTHS, SERVING_OUTPUTS
from headserve.head_file import serving_head

RUNNER_SOURCE = Path(__file__).with_name("onnx_runner_model.py")
LABELS_FILE = "labels.txt"
PROBS = "probs"


def encoder_model_name(encoder_name: str) -> str:
    return "encoder_" + re.sub(r"[^A-Za-z0-9_-]+", "_", encoder_name).strip("_")


def head_model_name(head: str) -> str:
    return f"{head}_head"


@dataclass(frozen=True)
class WrittenModel:
    name: str
    version: int
    path: Path
    max_abs_diff: Mapping[str, float]


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def publish_version(model_dir: Path, desc: ModelDesc, runtime: Runtime, files: Mapping[str, Path | bytes],
                     labels: list[str] | None = None,
                     options: ProductionOptions | None = None) -> tuple[int, Path]:
    """Stage the version directory, then config and labels, then rename the version into place.

    The repository's writer lock is held from choosing the version number to the rename, so two
    exporters never take the same number.
    """
    with repository_lock(Path(model_dir).parent):
        return _publish_version_locked(model_dir, desc, runtime, files, labels, options)


def _publish_version_locked(model_dir: Path, desc: ModelDesc, runtime: Runtime, files: Mapping[str, Path | bytes],
                            labels: list[str] | None, options: ProductionOptions | None) -> tuple[int, Path]:
    version = next_version(model_dir)
    staged = staging_dir(model_dir / str(version))
    try:
        for name, content in files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)  # names may hold a package path
            if isinstance(content, Path):
                shutil.copyfile(content, staged / name)
            else:
                (staged / name).write_bytes(content)
        if runtime is Runtime.LOCAL and desc.is_onnx:
            shutil.copyfile(RUNNER_SOURCE, staged / "model.py")
        if labels is not None:
            write_text_atomic(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
        write_text_atomic(model_dir / "config.pbtxt", to_text(render(desc, runtime, options)))
        return version, publish_dir(staged, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def add_encoder(repo: Path, loaded: LoadedEncoder, runtime: Runtime, max_batch_size: int = 64,
                options: ProductionOptions | None = None, precision: str = "fp32",
                external_data_bytes: int = EXTERNAL_DATA_BYTES) -> WrittenModel:
    """Export an encoder graph (preprocessing inside) as the next version of its model.

    ``precision="fp16"`` computes the encoder in float16 and is refused (``Fp16ParityError``, nothing
    written) when it yields NaN or leaves the fp16 tolerance of the fp32 encoder.
    """
    spec = loaded.spec
    graph = encoder_graph(loaded)
    name = encoder_model_name(spec.name)
    model_dir = Path(repo) / name
    tmp = staging_dir(model_dir / "export")
    try:
        graph_spec = replace(encoder_graph_spec(spec.name, spec.preprocess.input_size), atol=PRECISION_ATOL[precision],
                             ort_level=PRECISION_ORT_LEVEL[precision])
        diffs = export_onnx(encoder_export(graph, precision), graph_spec, tmp / "model.onnx",
                            reference=EncoderExport(graph), error=Fp16ParityError if precision == "fp16" else
                            ExportParityError, external_data_bytes=external_data_bytes)
        params = encoder_parameters(loaded, fingerprint(graph, spec.preprocess))
        params["precision"] = precision
        desc = encoder_desc(name, spec, params, max_batch_size, ort_level=graph_spec.ort_level)
        files: dict[str, Path | bytes] = {"model.onnx": tmp / "model.onnx", FINGERPRINT_FILE: fingerprint_bytes(params)}
        if (tmp / "model.onnx.data").is_file():  # external weights travel with the graph
            files["model.onnx.data"] = tmp / "model.onnx.data"
        version, path = publish_version(model_dir, desc, runtime, files, options=options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return WrittenModel(name, version, path, diffs)


def encoder_desc(name: str, spec: EncoderSpec, params: Mapping[str, str], max_batch_size: int = 64,
                 input_dtype: DataType = DataType.TYPE_UINT8, **runtime: Any) -> ModelDesc:
    """An encoder model: pixels at the input size -> its embedding under both ensemble roles.

    ``runtime`` passes ModelDesc's runtime fields (ort_level, dynamic_batching); benchmarks build
    variants (fp32 pixels, no batching) from the same description.
    """
    size = spec.preprocess.input_size
    return ModelDesc(
        name=name,
        inputs=(TensorSpec(ENCODER_INPUT, input_dtype, (size, size, 3)),),
        outputs=tuple(TensorSpec(o, DataType.TYPE_FP32, (spec.embedding_dim,))
                      for o in (ENCODER_OUTPUT, ENCODER_HEAD_FEED)),
        max_batch_size=max_batch_size,
        parameters=dict(params),
        **runtime,
    )


def encoder_parameters(loaded: LoadedEncoder, fp: str) -> dict[str, str]:
    spec = loaded.spec
    return {
        "encoder_name": spec.name,
        "encoder_type": spec.encoder_type,
        "encoder_model": spec.model_id,
        "embedding_dim": str(spec.embedding_dim),
        "encoder_fingerprint": fp,
        "preprocess": json.dumps(spec.preprocess.to_dict(), sort_keys=True),
        "untrained": json.dumps(spec.is_tiny),
    }


def add_head(repo: Path, meta: HeadMeta, tensors: Mapping[str, np.ndarray], encoder: WrittenModel | str,
             runtime: Runtime, encoder_params: Mapping[str, str] | None = None,
             max_batch_size: int = 64, options: ProductionOptions | None = None) -> tuple[WrittenModel, WrittenModel]:
    """Export a head and (re)write its ensemble; refuses a head trained on another encoder."""
    encoder_name = encoder if isinstance(encoder, str) else encoder.name
    if encoder_params is not None:
        check_encoder_match(meta, encoder_params["encoder_type"], encoder_params["encoder_model"],
                            int(encoder_params["embedding_dim"]), encoder_params.get("encoder_fingerprint"),
                            where=f"repository encoder {encoder_name}")
    module = serving_head(meta, tensors)
    head_name = head_model_name(meta.name)
    head_dir = Path(repo) / head_name
    n = len(meta.classes)
    outputs = tuple(
        TensorSpec(o, DataType.TYPE_FP32, (SERVING_OUTPUT_WIDTHS.get(o, n),), LABELS_FILE if o == PROBS else None)
        for o in SERVING_OUTPUTS
    )
    tmp = staging_dir(head_dir / "export")
    try:
        diffs = export_onnx(module, head_graph_spec(meta.name, meta.embedding_dim, SERVING_OUTPUTS), tmp / "model.onnx")
        desc = ModelDesc(
            name=head_name,
            inputs=(TensorSpec(HEAD_INPUT, DataType.TYPE_FP32, (meta.embedding_dim,)),),
            outputs=outputs,
            max_batch_size=max_batch_size,
            light=True,
            keep_versions=2,
        )
        with repository_lock(repo):  # the head's version and the ensemble naming it are one step for readers
            version, path = publish_version(head_dir, desc, runtime, {"model.onnx": tmp / "model.onnx"},
                                             meta.classes, options)
            written_head = WrittenModel(head_name, version, path, diffs)
            ensemble = write_ensemble(Path(repo), meta, encoder_name, head_name, runtime, max_batch_size,
                                      head_version=version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written_head, ensemble


def head_parameters(meta: HeadMeta) -> dict[str, str]:
    """What clients discover from the ensemble's config: enough to preprocess and decide."""
    params = {
        "classes": json.dumps(meta.classes),
        "background_indices": json.dumps(meta.background_indices),
        "encoder_type": meta.encoder_type,
        "encoder_model": meta.encoder_model,
        "encoder_name": meta.encoder_name or "",
        "embedding_dim": str(meta.embedding_dim),
        "preprocess": json.dumps(meta.preprocess, sort_keys=True),
        "temperature": repr(meta.temperature),
        "head_type": meta.head_type,
        "classifier": meta.head_config.get("classifier", "linear"),  # heads saved before ArcFace are linear
    }
    if meta.encoder_fingerprint:
        params["encoder_fingerprint"] = meta.encoder_fingerprint
    ood_threshold = getattr(meta, "ood_threshold", None)  # heads trained with an OOD detector publish it
    if ood_threshold is not None:
        params["ood_threshold"] = repr(float(ood_threshold))
    return params


def write_ensemble(repo: Path, meta: HeadMeta, encoder_name: str, head_name: str, runtime: Runtime,
                   max_batch_size: int = 64, head_version: int = -1) -> WrittenModel:
    """The ensemble clients call: encoder (newest version) -> ``head_version`` of the head, whose classes it
    publishes. A head export pins the version it wrote, so no request is ever answered by another head
    version under these classes."""
    spec = meta.preprocess_spec
    n = len(meta.classes)
    outputs = tuple(
        TensorSpec(o, DataType.TYPE_FP32, (SERVING_OUTPUT_WIDTHS.get(o, n),), LABELS_FILE if o == PROBS else None)
        for o in SERVING_OUTPUTS
    ) + (TensorSpec(ENCODER_OUTPUT, DataType.TYPE_FP32, (meta.embedding_dim,)),)
    desc = ModelDesc(
        name=meta.name,
        inputs=(TensorSpec(ENCODER_INPUT, DataType.TYPE_UINT8, (spec.input_size, spec.input_size, 3)),),
        outputs=outputs,
        max_batch_size=max_batch_size,
        steps=(
            EnsembleStep(encoder_name, {ENCODER_INPUT: ENCODER_INPUT},
                         {ENCODER_OUTPUT: ENCODER_OUTPUT, ENCODER_HEAD_FEED: ENCODER_HEAD_FEED}),
            EnsembleStep(head_name, {HEAD_INPUT: ENCODER_HEAD_FEED}, {o: o for o in SERVING_OUTPUTS},
                         version=head_version),
        ),
        parameters={**head_parameters(meta), **_kept_prompt_parameters(repo, meta.name)},
    )
    version, path = publish_version(repo / meta.name, desc, runtime, {}, meta.classes)
    return WrittenModel(meta.name, version, path, {})


def read_head_ensemble(repo: Path, head: str, purpose: str) -> tuple[ModelConfig, dict[str, str]]:
    """The config and parameters of a head's ensemble, which ``purpose`` (e.g. "its prompts") builds on."""
    path = Path(repo) / head / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist: export head {head!r} before {purpose}")
    config = parse(path.read_text())
    return config, parameters_of(config)


def _kept_prompt_parameters(repo: Path, head: str) -> dict[str, str]:
    """A re-exported head keeps the prompt model and encoded variant published on its previous ensemble."""
    path = repo / head / "config.pbtxt"
    if not path.is_file():
        return {}
    params = parameters_of(parse(path.read_text()))
    kept = {}
    if params.get("prompt_model") and (repo / params["prompt_model"] / "config.pbtxt").is_file():
        kept.update({k: params[k] for k in ("prompt_model", "prompt_classes") if k in params})
    if params.get("encoded_model") and (repo / params["encoded_model"] / "config.pbtxt").is_file():
        kept["encoded_model"] = params["encoded_model"]
    return kept
