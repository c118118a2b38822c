"""Region heads in a repository: the region encoder and the ensemble a client calls with one image and its boxes.

A region encoder (``headserve.regions``) takes one letterboxed image, uint8 (1, R, R, 3), and its boxes, FP32
(K, 4) in pixels of that image, and answers one L2-normalised embedding per box, (K, D), from one pass over the
image. Its heads are ordinary heads (embedding -> logits, probs, ood_score, head_id): the ensemble feeds them
the K embeddings as a batch of K rows, so every output comes back with one row per box.

Batching. A request is one image with its own K boxes; two images' box counts differ, and Triton can only
batch tensors that agree beyond their first dimension, so the region encoder and the ensemble are
non-batching models (``max_batch_size: 0``): their tensors are declared whole, ``[1, R, R, 3]`` and
``[-1, 4]``. The head step keeps batching: Triton hands it the K embeddings as a batch of K (a non-batching
``[-1, D]`` tensor feeds a batching ``[D]`` input), and its dynamic batcher may merge the boxes of several
images into one head call. The head model's ``max_batch_size`` is therefore the cap on boxes per image:
``MAX_BOXES`` by default, published on the ensemble as the ``max_boxes`` parameter so a client refuses more
boxes before sending, naming the cap (Triton refuses them too: "batch-size must be <= N" for the head).
Concurrency across images comes from requests in flight and encoder instances, not from batching images.

An image with no boxes is the client's to answer (no request: an empty list); sent anyway, Triton refuses it
at the head step, never answers it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from headserve.artifact import HeadMeta, trained_encoder
from headserve.contract import (
    BOXES,
    EMBEDDING,
    HEAD_FEED,
    MAX_BOXES_KEY,
    REGION_PIXELS,
    EncoderIdentity,
    ServedHead,
    region_encoder_model_name,
)
from headserve.encoders import EncoderSpec
from headserve.export.errors import OptionsError
from headserve.export.fingerprint_file import FINGERPRINT_FILE, fingerprint_bytes
from headserve.export.model_config import (
    DataType,
    EnsembleStep,
    ModelDesc,
    Runtime,
    RuntimeOptions,
    TensorSpec,
    parameters_of,
    read_config,
)
from headserve.fsutil import staging_dir
from headserve.regions import RegionSpec

if TYPE_CHECKING:
    from headserve.backbones import LoadedEncoder
    from headserve.export.example import ExampleHead
    from headserve.export.repository import EnsembleWiring, HeadGraph, WrittenModel
    from headserve.head import ServingHead

MAX_BOXES = 256  # boxes per image a region ensemble accepts: its head model's max_batch_size
REGION_STEP_INPUTS = {REGION_PIXELS: REGION_PIXELS, BOXES: BOXES}  # the encoder step reads both ensemble inputs
Log = Callable[[str], None]


def region_inputs(resolution: int) -> tuple[TensorSpec, ...]:
    """The inputs of a region encoder and of its ensembles, declared whole (non-batching)."""
    return (TensorSpec(REGION_PIXELS, DataType.TYPE_UINT8, (1, resolution, resolution, 3)),
            TensorSpec(BOXES, DataType.TYPE_FP32, (-1, 4)))


def per_box(spec: TensorSpec) -> TensorSpec:
    """A batched output (width only) as a non-batching region ensemble declares it: one row per box."""
    return replace(spec, dims=(-1, *spec.dims))


def region_encoder_desc(name: str, identity: EncoderIdentity, resolution: int, params: dict[str, str]) -> ModelDesc:
    """A region encoder model: one letterboxed image and its boxes -> an embedding per box, under both
    ensemble roles (``embedding`` for the caller, ``head_input`` for the heads)."""
    return ModelDesc(
        name=name,
        inputs=region_inputs(resolution),
        outputs=tuple(TensorSpec(o, DataType.TYPE_FP32, (-1, identity.embedding_dim)) for o in (EMBEDDING, HEAD_FEED)),
        max_batch_size=0,
        dynamic_batching=False,  # a non-batching model must not declare a dynamic batcher
        parameters=dict(params),
    )


def check_region_options(options: RuntimeOptions | None) -> None:
    """Refuse runtime options a region encoder cannot take: TensorRT profiles need fixed box counts."""
    if options is not None and options.tensorrt is not None:
        raise OptionsError("a region encoder takes a different number of boxes per image, which TensorRT's fixed "
                           "optimisation profiles cannot describe; export it without `tensorrt` (ONNX Runtime's "
                           "CUDA provider runs it)").about("tensorrt", options.tensorrt.precision)


def region_ensemble_desc(served: ServedHead, wiring: EnsembleWiring) -> ModelDesc:
    """The ensemble a client calls with one image and its boxes: region encoder -> the wiring's head version.

    ``wiring`` (``export.repository.EnsembleWiring``) names the models; its ``max_batch_size`` is the head
    model's, the cap on boxes per image, which the record publishes beside the head's own parameters.
    """
    from headserve.export.repository import head_outputs

    assert served.encoder.region is not None  # head_ensemble_desc sends region heads here
    outputs = head_outputs(served, wiring)
    return ModelDesc(
        name=served.name,
        inputs=region_inputs(served.encoder.region.resolution),
        outputs=tuple(per_box(o) for o in outputs) + (
            TensorSpec(EMBEDDING, DataType.TYPE_FP32, (-1, served.embedding_dim)),),
        max_batch_size=0,
        steps=(
            EnsembleStep(wiring.encoder_model, dict(REGION_STEP_INPUTS), {EMBEDDING: EMBEDDING, HEAD_FEED: HEAD_FEED}),
            EnsembleStep(wiring.head_model, {EMBEDDING: HEAD_FEED}, {o.name: o.name for o in outputs},
                         version=wiring.head_version),
        ),
        parameters={**served.to_parameters(), MAX_BOXES_KEY: str(wiring.max_batch_size)},
    )


def multi_head_region_desc(desc: ModelDesc, region: RegionSpec, max_boxes: int) -> ModelDesc:
    """A multi-head ensemble (``export.multi_head``) rewired for a region encoder: image and boxes in, one row
    per box of every head's outputs, non-batching like its per-head ensembles, with the smallest heads' cap."""
    first, *heads = desc.steps
    return replace(
        desc,
        inputs=region_inputs(region.resolution),
        outputs=tuple(per_box(o) for o in desc.outputs),
        max_batch_size=0,
        steps=(replace(first, input_map=dict(REGION_STEP_INPUTS)), *heads),
        parameters={**desc.parameters, MAX_BOXES_KEY: str(max_boxes)},
    )


# ---------------------------------------------------------------------------------------------
# Export: the region encoder (once per repository) and a region head on it.


def add_region_encoder(repo: str | Path, loaded: LoadedEncoder, region: RegionSpec, runtime: Runtime,
                       options: RuntimeOptions | None = None, log: Log = lambda line: None) -> WrittenModel:
    """Export ``loaded``'s region encoder as the next version of its model; checked against PyTorch first
    (``ExportParityError``, nothing written, when it is not exact). ONNX Runtime fp32 in both runtimes."""
    from headserve.export.onnx_export import export_region_encoder
    from headserve.export.repository import WrittenModel, publish_version

    check_region_options(options)
    name = region_encoder_model_name(loaded.spec.name, region.resolution)
    model_dir = Path(repo) / name
    new_model = not model_dir.exists()
    tmp = staging_dir(model_dir / "export")
    try:
        written = export_region_encoder(loaded, region, tmp / "model.onnx")
        params = {**written.identity.to_parameters(), "untrained": json.dumps(loaded.spec.is_tiny)}
        desc = region_encoder_desc(name, written.identity, region.resolution, params)
        files: dict[str, Path | bytes] = {"model.onnx": tmp / "model.onnx",
                                          FINGERPRINT_FILE: fingerprint_bytes(params, None)}
        if (tmp / "model.onnx.data").is_file():  # external weights travel with the graph
            files["model.onnx.data"] = tmp / "model.onnx.data"
        version, path = publish_version(model_dir, desc, runtime, files, options=options)
        log(f"encoder {loaded.spec.name}: {region.label}, onnxruntime fp32")
    except BaseException:
        if new_model:  # a refused encoder leaves no model directory behind
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                model_dir.rmdir()
            except OSError:
                pass
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return WrittenModel(name, version, path, written.diffs)


def export_region_head(meta: HeadMeta, module: ServingHead, graph: HeadGraph, name: str, repo: Path,
                       runtime: Runtime, encoder_weights: str | None, options: RuntimeOptions | None,
                       log: Log) -> list[WrittenModel]:
    """``export head`` for a head trained on region embeddings (``meta.encoder.region``), under the repository
    lock: its region encoder (exported the first time), the head with ``MAX_BOXES`` as its batch, and the region
    ensemble. A head whose mode, resolution or weights differ from the served region encoder's is refused
    before anything is written, naming both."""
    from headserve.backbones import fingerprint, load_encoder, region_graph
    from headserve.export.repository import add_head

    region = meta.encoder.region
    assert region is not None  # the caller dispatches region heads here
    check_region_options(options)
    model = region_encoder_model_name(name, region.resolution)
    config_path = repo / model / "config.pbtxt"
    loaded = None
    if config_path.is_file() and any(p.is_dir() and p.name.isdigit() for p in (repo / model).iterdir()):
        params = parameters_of(read_config(config_path))
    else:
        spec, source = trained_encoder(meta, name, encoder_weights)
        log(f"encoder {name}: weights {source}")
        loaded = load_encoder(spec)
        identity = EncoderIdentity.from_spec(spec, fingerprint(region_graph(loaded, region), spec.preprocess, region),
                                             region)
        params = identity.to_parameters()
    served_encoder = EncoderIdentity.from_parameters(params, f"encoder {model}")
    meta.encoder.require_match(served_encoder, meta.name, where=f"encoder {model}")
    written: list[WrittenModel] = []
    if loaded is not None:
        written.append(add_region_encoder(repo, loaded, region, runtime, options, log))
    meta.encoder = replace(meta.encoder, name=meta.encoder.name or name)
    written.extend(add_head(repo, meta, module, model, runtime, max_batch_size=MAX_BOXES, options=options,
                            graph=graph))
    return written


def write_example_region_head(spec: EncoderSpec, example: ExampleHead, out: str | Path,
                              resolution: int | None = None) -> Path:
    """The example head (``export.example``) trained, as it were, on ``spec``'s region embeddings at
    ``resolution`` (default: the encoder's own, ``region_spec_for``): untrained weights with a region encoder's
    identity, fingerprint included, for tests and benchmarks that need a region head without training."""
    from headserve.backbones import fingerprint, load_encoder, region_graph, region_spec_for
    from headserve.export.example import write_example_head
    from headserve.head import load_head, save_head

    loaded = load_encoder(spec)
    region = region_spec_for(loaded, resolution)
    fp = fingerprint(region_graph(loaded, region), loaded.spec.preprocess, region)
    with tempfile.TemporaryDirectory(prefix="headserve-example-") as scratch:
        meta, module = load_head(write_example_head(spec, example, Path(scratch) / example.name))
    meta.encoder = replace(meta.encoder, fingerprint=fp, region=region)
    return save_head(out, meta, module)
