"""A Triton model repository of encoders, heads and the ensembles that chain them.

Per encoder: ``encoder_<slug>`` (uint8 pixels -> embedding). Per head: ``<head>_head`` (embedding ->
logits, calibrated probabilities) and the ensemble ``<head>`` (pixels -> everything), which is the
name clients call. Metadata a client needs (classes, background classes, encoder type, input spec)
is published as ensemble parameters and a labels file, so a caller passes only the head name.

Version directories are staged beside their final place and renamed in, and ``config.pbtxt`` files
are replaced atomically, so a polling Triton never reads half a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import py_compile
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from headserve.artifact import HeadMeta
from headserve.backbones import EncoderGraph, LoadedEncoder, encoder_graph, fingerprint
from headserve.contract import (
    EMBEDDING,
    HEAD_FEED,
    HEAD_OUTPUT_TYPES,
    HEAD_OUTPUT_WIDTHS,
    HEAD_OUTPUTS,
    IDENTITY_KEYS,
    LABELS_FILE,
    PIXELS,
    PROBS,
    EncoderIdentity,
    ParameterError,
    ServedHead,
    encoder_model_name,
    head_id_of,
    head_model_name,
    max_boxes_of,
)
from headserve.encoders import EncoderSpec, require_export_precision
from headserve.errors import ExportParityError, RepositoryError
from headserve.export.engine import (
    DEFAULT_ENGINE,
    EngineChoice,
    EngineParityError,
    ParityFigures,
    check_parity,
    engine_encoder,
    engine_parameters,
    sample_pixels,
)
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
    read_config,
    render,
    to_text,
)
from headserve.export.onnx_export import (
    EXTERNAL_DATA_BYTES,
    PRECISION_ATOL,
    PRECISION_ORT_LEVEL,
    EncoderExport,
    encoder_export,
    encoder_graph_spec,
    export_onnx,
    head_graph_spec,
)
from headserve.fsutil import publish_dir, staging_dir, write_text_atomic
from headserve.head import ServingHead
from headserve.lockfile import check_repository_path, repository_lock

RUNNER_SOURCE = Path(__file__).with_name("onnx_runner_model.py")
# In every head version directory: the record (``ServedHead`` parameters, JSON) its ensemble published when that
# version was exported, so `repo pin` re-renders the ensemble of an earlier version with that version's classes,
# labels and head_id, never the newest one's.
SERVED_RECORD = "served.json"
HEAD_KEEP_VERSIONS = 2  # head versions Triton keeps loaded (ModelDesc.keep_versions) while none is pinned
# encoder_model_name and head_model_name are re-exported from headserve.contract.
__all__ = ["encoder_model_name", "head_model_name"]


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
        precompile_sources(staged)
        if labels is not None:
            write_text_atomic(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
        write_text_atomic(model_dir / "config.pbtxt", to_text(render(desc, runtime, options)))
        return version, publish_dir(staged, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def precompile_sources(version_dir: Path) -> None:
    """Write the bytecode of every Python file in a version directory now, while it is staged.

    The python backend's stub runs its interpreter isolated (PYTHONDONTWRITEBYTECODE is ignored there) and
    would otherwise write ``__pycache__/`` into the served version on first import; a polling Triton takes that
    for a changed model and reloads it. Hash-checked pycs stay valid when the repository is copied (mtimes
    change) and are rebuilt, not trusted, if a source is edited. A stub of another Python version still
    writes its own pyc beside these: serve a production repository from a read-only volume.
    """
    for source in sorted(version_dir.rglob("*.py")):
        py_compile.compile(str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def add_encoder(repo: Path, loaded: LoadedEncoder, runtime: Runtime, max_batch_size: int = 64,
                options: ProductionOptions | None = None, precision: str = "fp32",
                external_data_bytes: int = EXTERNAL_DATA_BYTES, choice: EngineChoice | None = None,
                decide: Callable[[np.ndarray], np.ndarray] | None = None,
                log: Callable[[str], None] = lambda line: None,
                encoder_fingerprint: str | None = None) -> WrittenModel:
    """Export an encoder graph (preprocessing inside) as the next version of its model.

    ``precision="fp16"`` computes the encoder in float16 and is refused (``Fp16ParityError``, nothing
    written) when it yields NaN or leaves the fp16 tolerance of the fp32 encoder.

    ``choice`` (default: ONNX Runtime at ``precision``) names the engine that serves the graph. Every CPU
    engine is checked on real crops against the fp32 PyTorch encoder (``check_engine``) before anything
    is written; the figures go into the config and ``fingerprint.json``. ``decide`` (the head about to be
    served, embeddings -> scores) adds its top-1 agreement to the figures. ``log`` says what was chosen.
    ``encoder_fingerprint``: the graph's fingerprint when the caller computed it already (hashing every weight
    of a ViT-L takes seconds), else computed here.
    """
    spec = loaded.spec
    choice = choice or EngineChoice(DEFAULT_ENGINE, precision, f"{DEFAULT_ENGINE} {precision}: asked for")
    require_export_precision(spec, choice.precision)
    graph = encoder_graph(loaded)
    name = encoder_model_name(spec.name)
    model_dir = Path(repo) / name
    graph_precision = choice.precision if choice.engine == DEFAULT_ENGINE else "fp32"  # OpenVINO reads the fp32 graph
    check_repository_path(Path(repo))  # before staging: a --repo under a file was a NotADirectoryError traceback
    new_model = not model_dir.exists()
    tmp = staging_dir(model_dir / "export")
    try:
        graph_spec = replace(encoder_graph_spec(spec.name, spec.preprocess.input_size),
                             atol=PRECISION_ATOL[graph_precision], ort_level=PRECISION_ORT_LEVEL[graph_precision])
        diffs = export_onnx(encoder_export(graph, graph_precision), graph_spec, tmp / "model.onnx",
                            reference=EncoderExport(graph), error=Fp16ParityError if graph_precision == "fp16" else
                            ExportParityError, external_data_bytes=external_data_bytes)
        figures = None
        if graph_precision != "fp16":  # fp16 graphs are GPU graphs, checked by export_onnx's fp16 tolerance
            choice, figures = check_engine(graph, spec, tmp / "model.onnx", choice, decide, log)
        log(f"encoder {spec.name}: engine {choice.reason}" + (f"; check: {figures.summary()}" if figures else ""))
        params = encoder_parameters(loaded, encoder_fingerprint or fingerprint(graph, spec.preprocess))
        params.update(engine_parameters(choice))
        desc = encoder_desc(name, spec, params, max_batch_size, ort_level=graph_spec.ort_level, engine=choice.engine,
                            engine_precision=choice.precision)
        files: dict[str, Path | bytes] = {"model.onnx": tmp / "model.onnx", FINGERPRINT_FILE: fingerprint_bytes(
            params, figures.to_dict() if figures else None)}
        if (tmp / "model.onnx.data").is_file():  # external weights travel with the graph
            files["model.onnx.data"] = tmp / "model.onnx.data"
        version, path = publish_version(model_dir, desc, runtime, files, options=options)
    except BaseException:
        if new_model:  # the staging made the model's directory: a refused encoder leaves none behind
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                model_dir.rmdir()  # only while empty: another writer's files keep it
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return WrittenModel(name, version, path, diffs)


def check_engine(graph: EncoderGraph, spec: EncoderSpec, onnx_path: Path, choice: EngineChoice,
                 decide: Callable[[np.ndarray], np.ndarray] | None,
                 log: Callable[[str], None] = lambda line: None) -> tuple[EngineChoice, ParityFigures]:
    """Embed the check's sample with the fp32 PyTorch encoder and with ``choice``'s engine over ``onnx_path``.

    Raises ``EngineParityError`` below the precision's minimum cosine. An automatic bf16 choice
    (``choice.fallback``) falls back to the same engine in fp32 instead, and says why.
    """
    pixels, source = sample_pixels(spec.preprocess)
    with torch.inference_mode():  # the exporter's graph is on the CPU, in fp32
        reference = graph.eval()(torch.from_numpy(pixels)).float().numpy()
    try:
        return choice, check_parity(spec.name, reference, engine_encoder(onnx_path, choice.engine, choice.precision)(
            pixels), choice.engine, choice.precision, source, decide)
    except EngineParityError as exc:
        if not choice.fallback:
            raise
        log(f"encoder {spec.name}: {exc.figures.precision} refused by the check ({exc.figures.summary()}); "
            "falling back to fp32")
        fp32 = EngineChoice(choice.engine, "fp32", f"{choice.engine} fp32: {choice.precision} failed the check "
                                                   f"(min cosine {exc.figures.min_cosine:.5f})")
        return fp32, check_parity(spec.name, reference, engine_encoder(onnx_path, fp32.engine, "fp32")(pixels),
                                  fp32.engine, "fp32", source, decide)


def encoder_desc(name: str, spec: EncoderSpec, params: Mapping[str, str], max_batch_size: int = 64,
                 input_dtype: DataType = DataType.TYPE_UINT8, **runtime: Any) -> ModelDesc:
    """An encoder model: pixels at the input size -> its embedding under both ensemble roles.

    ``runtime`` passes ModelDesc's runtime fields (ort_level, dynamic_batching); benchmarks build
    variants (fp32 pixels, no batching) from the same description.
    """
    size = spec.preprocess.input_size
    return ModelDesc(
        name=name,
        inputs=(TensorSpec(PIXELS, input_dtype, (size, size, 3)),),
        outputs=tuple(TensorSpec(o, DataType.TYPE_FP32, (spec.embedding_dim,)) for o in (EMBEDDING, HEAD_FEED)),
        max_batch_size=max_batch_size,
        parameters=dict(params),
        **runtime,
    )


def encoder_parameters(loaded: LoadedEncoder, fp: str) -> dict[str, str]:
    """An encoder model's parameters: its identity (read back with ``EncoderIdentity.from_parameters``)."""
    return {**EncoderIdentity.from_spec(loaded.spec, fp).to_parameters(), "untrained": json.dumps(loaded.spec.is_tiny)}


@dataclass(frozen=True)
class HeadGraph:
    """A head's ONNX graph, exported and checked against PyTorch, not yet in any repository."""

    path: Path  # model.onnx in a scratch directory
    max_abs_diff: Mapping[str, float]  # per output, max |ONNX - PyTorch| of the parity check


def export_head_graph(meta: HeadMeta, module: ServingHead, directory: Path) -> HeadGraph:
    """The head's graph as ``directory/model.onnx``; ``ExportParityError`` (nothing written) when it is not exact.

    Kept apart from ``add_head`` so that ``export head`` can check the graph before it creates or locks the
    repository: a head whose graph fails leaves the repository as it was.
    """
    path = Path(directory) / "model.onnx"
    head_id = served_head(meta, module).head_id
    assert head_id is not None  # served_head computes it from the module
    diffs = export_onnx(IdentifiedHead(module, head_id), head_graph_spec(meta.name, meta.embedding_dim, HEAD_OUTPUTS),
                        path)
    return HeadGraph(path, diffs)


def add_head(repo: Path, meta: HeadMeta, module: ServingHead, encoder: WrittenModel | str,
             runtime: Runtime, max_batch_size: int = 64, options: ProductionOptions | None = None,
             graph: HeadGraph | None = None) -> tuple[WrittenModel, WrittenModel]:
    """Export a head (or publish its ``graph`` exported already) and (re)write its ensemble.

    The caller has paired the head with ``encoder`` (``export head`` checks the encoder's identity once,
    before anything is written); this only publishes.
    """
    encoder_name = encoder if isinstance(encoder, str) else encoder.name
    _ = meta.preprocess_spec  # a head without its preprocessing cannot be served: ArtifactError before writing
    head_name = head_model_name(meta.name)
    head_dir = Path(repo) / head_name
    served = served_head(meta, module)
    outputs = tuple(_head_output_spec(o, len(meta.classes)) for o in HEAD_OUTPUTS)
    # Scratch outside the repository: the head's directory is created only by the publish below.
    with tempfile.TemporaryDirectory(prefix=f"headserve-{head_name}-") as scratch:
        graph = graph or export_head_graph(meta, module, Path(scratch))
        record = json.dumps(served.to_parameters(), indent=1, sort_keys=True).encode() + b"\n"
        with repository_lock(repo):  # the head's version and the ensemble naming it are one step for readers
            desc = ModelDesc(
                name=head_name,
                inputs=(TensorSpec(EMBEDDING, DataType.TYPE_FP32, (meta.embedding_dim,)),),
                outputs=outputs,
                max_batch_size=max_batch_size,
                light=True,
                keep_versions=head_keep_versions(newest_classes(head_dir), len(meta.classes)),
            )
            version, path = publish_version(head_dir, desc, runtime, {"model.onnx": graph.path, SERVED_RECORD: record},
                                             meta.classes, options)
            written_head = WrittenModel(head_name, version, path, graph.max_abs_diff)
            ensemble = write_ensemble(Path(repo), served, encoder_name, head_name, runtime, max_batch_size,
                                      head_version=version)
    return written_head, ensemble


def head_keep_versions(previous: int | None, classes: int) -> int:
    """How many newest head versions Triton keeps loaded once a version with ``classes`` classes is published.

    One config declares the output widths of every loaded version, so the previous version stays loaded
    (for requests in flight across a swap) only when it has as many classes (``previous``; None: there is
    no previous version; 0: its class count is unknown). Otherwise it would be served under the new widths
    and fail every answer.
    """
    return HEAD_KEEP_VERSIONS if previous in (None, classes) else 1


def newest_classes(head_dir: Path) -> int | None:
    """The class count of a head model's newest version: from its record, or for a version exported before
    records were kept, from the config's ``probs`` width unless a pin set the config to another version;
    0 when unknown, None when the head has no version yet."""
    versions = [int(p.name) for p in Path(head_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        return None
    record = Path(head_dir) / str(max(versions)) / SERVED_RECORD
    if record.is_file():
        try:
            return len(json.loads(json.loads(record.read_text())["classes"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 0
    path = Path(head_dir) / "config.pbtxt"
    config = read_config(path) if path.is_file() else None
    if config is None or config.version_policy.WhichOneof("policy_choice") == "specific":
        return 0
    widths = [int(o.dims[0]) for o in config.output if o.name == PROBS and len(o.dims) == 1]
    return widths[0] if widths else 0


def _head_output_spec(output: str, classes: int, labels: str | None = LABELS_FILE, name: str | None = None) -> TensorSpec:
    """A head output as a model or an ensemble declares it: its type, its width, and the labels of ``probs``."""
    return TensorSpec(name or output, DataType[f"TYPE_{HEAD_OUTPUT_TYPES.get(output, 'FP32')}"],
                      (HEAD_OUTPUT_WIDTHS.get(output, classes),), labels if output == PROBS else None)


class IdentifiedHead(nn.Module):
    """The head graph as exported: the serving head's outputs, then its id on every row (``HEAD_ID``)."""

    def __init__(self, head: ServingHead, head_id: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("head_id", torch.tensor([[head_id]], dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*self.head(x), self.head_id.expand(x.shape[0], 1))  # ..., (B, 1)

    def logit_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """The serving head's, for the parity check's logit tolerance (export.onnx_export.head_graph_spec)."""
        return self.head.logit_magnitude(x)


def head_id(meta: HeadMeta, module: ServingHead, record: ServedHead) -> int:
    """What identifies the head a served answer came from: its weights and the record's decoding fields.

    Equal for the same artifact exported twice (so a long-lived client still decodes it), different for
    any change a client must notice: another class order, temperature, threshold, or any weight.
    """
    digest = hashlib.sha256()
    decoding = {k: v for k, v in record.to_parameters().items() if k in DECODING_KEYS}
    digest.update(json.dumps(decoding, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return head_id_of(digest.digest())


# The record's fields that change how an answer is read; prompt and encoded-variant links are added later
# without re-exporting the head, so they are not part of its id.
DECODING_KEYS: tuple[str, ...] = ("classes", "background_indices", "temperature", "head_type", "classifier",
                                  "ood_threshold", "ood_quantile", *IDENTITY_KEYS)


def served_head(meta: HeadMeta, module: ServingHead | None = None) -> ServedHead:
    """The record a head's ensemble publishes, from the head's meta.json (and its id, given the module)."""
    record = _served_head(meta)
    return replace(record, head_id=head_id(meta, module, record)) if module is not None else record


def _served_head(meta: HeadMeta) -> ServedHead:
    return ServedHead(
        name=meta.name,
        classes=tuple(meta.classes),
        encoder=meta.encoder,
        background_indices=tuple(meta.background_indices),
        temperature=float(meta.temperature),
        head_type=meta.head_type,
        classifier=meta.head_config.get("classifier", "linear"),  # heads saved before ArcFace are linear
        # heads trained with an OOD detector publish it, and the quantile it was set at (None for older heads)
        ood_threshold=float(meta.ood_threshold) if meta.ood_threshold is not None else None,
        ood_quantile=(float(meta.ood_quantile) if meta.ood_threshold is not None and meta.ood_quantile is not None
                      else None),
    )


def head_parameters(meta: HeadMeta) -> dict[str, str]:
    """What clients discover from the ensemble's config: enough to preprocess and decide."""
    return served_head(meta).to_parameters()


@dataclass(frozen=True)
class EnsembleWiring:
    """How a head ensemble's steps connect: the part of its config that the ServedHead record does not hold."""

    encoder_model: str  # the first step: the encoder model, run at its newest version
    head_model: str  # the second step: the head model
    head_version: int = -1  # the head version the ensemble publishes the classes of; -1 is the newest
    max_batch_size: int = 64  # largest batch the ensemble accepts
    head_outputs: tuple[str, ...] = HEAD_OUTPUTS  # the head's outputs the ensemble publishes, in order


def head_ensemble_desc(served: ServedHead, wiring: EnsembleWiring) -> ModelDesc:
    """The ensemble clients call, rendered from the record: pixels -> encoder -> head, plus the embedding.
    A region head's takes one image and its boxes instead (``export.region_ensemble``)."""
    if served.encoder.region is not None:
        from headserve.export.region_ensemble import region_ensemble_desc

        return region_ensemble_desc(served, wiring)
    size = served.preprocess.input_size
    return ModelDesc(
        name=served.name,
        inputs=(TensorSpec(PIXELS, DataType.TYPE_UINT8, (size, size, 3)),),
        outputs=head_outputs(served, wiring) + (TensorSpec(EMBEDDING, DataType.TYPE_FP32, (served.embedding_dim,)),),
        max_batch_size=wiring.max_batch_size,
        steps=(
            EnsembleStep(wiring.encoder_model, {PIXELS: PIXELS}, {EMBEDDING: EMBEDDING, HEAD_FEED: HEAD_FEED}),
            EnsembleStep(wiring.head_model, {EMBEDDING: HEAD_FEED}, {o: o for o in wiring.head_outputs},
                         version=wiring.head_version),
        ),
        parameters=served.to_parameters(),
    )


def head_outputs(served: ServedHead, wiring: EnsembleWiring,
                  rename: Callable[[str], tuple[str, str]] | None = None) -> tuple[TensorSpec, ...]:
    """The head's outputs as an ensemble publishes them (``rename``: output -> published name, label file)."""
    specs = []
    for o in wiring.head_outputs:
        name, labels = rename(o) if rename else (o, LABELS_FILE)
        specs.append(_head_output_spec(o, len(served.classes), labels, name))
    return tuple(specs)


def write_ensemble(repo: Path, served: ServedHead, encoder_name: str, head_name: str, runtime: Runtime,
                   max_batch_size: int = 64, head_version: int = -1) -> WrittenModel:
    """The ensemble clients call: encoder (newest version) -> ``head_version`` of the head, whose record it
    publishes. A head export pins the version it wrote; the head's id on every answer lets a client refuse
    an answer that Triton computed with another head version anyway (see ``HEAD_ID``)."""
    served = _keep_dependents(repo, served)
    desc = head_ensemble_desc(served, EnsembleWiring(encoder_name, head_name, head_version, max_batch_size))
    version, path = publish_version(repo / served.name, desc, runtime, {}, list(served.classes))
    return WrittenModel(served.name, version, path, {})


def read_served_head(repo: Path, head: str, purpose: str) -> tuple[ServedHead, EnsembleWiring]:
    """The record and wiring of a head's ensemble, which ``purpose`` (e.g. "its prompts") builds on.

    Raises RepositoryError when the ensemble is missing or is not a per-head ensemble, and
    ``ParameterError`` (a RepositoryError) naming a missing or malformed parameter.
    """
    path = Path(repo) / head / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist: export head {head!r} before {purpose}")
    config = read_config(path)
    steps = config.ensemble_scheduling.step
    params = parameters_of(config)
    if config.platform != "ensemble" or len(steps) != 2 or "preprocess" not in params:
        raise RepositoryError(f"{path}: {head!r} is not a head ensemble written by headserve (an encoder step and a "
                              "head step, with a preprocess parameter); pass a name `headserve repo list` shows as "
                              "an ensemble")
    served = ServedHead.from_parameters(head, params, where=str(path))
    max_batch = config.max_batch_size
    if served.encoder.region is not None:  # a non-batching region ensemble: its head's batch is the box cap
        max_batch = max_boxes_of(params, str(path))
    wiring = EnsembleWiring(
        encoder_model=steps[0].model_name,
        head_model=steps[1].model_name,
        head_version=steps[1].model_version,
        max_batch_size=max_batch,
        head_outputs=tuple(o.name for o in config.output if o.name != EMBEDDING),
    )
    return served, wiring


def rewrite_head_ensemble(repo: Path, served: ServedHead, wiring: EnsembleWiring) -> None:
    """Replace the config of the head ensemble's current version with one rendered from ``served``.

    Publishing a dependent model (prompts, the encoded variant) changes only the record; the version
    directory and its wiring stay, so Triton reloads the same ensemble with the new parameters.
    """
    config = render(head_ensemble_desc(served, wiring), Runtime.LOCAL)  # ensembles render alike for both runtimes
    write_text_atomic(Path(repo) / served.name / "config.pbtxt", to_text(config))


def _keep_dependents(repo: Path, served: ServedHead) -> ServedHead:
    """A re-exported head keeps the prompt model and encoded variant published on its previous ensemble,
    while those models exist."""
    path = repo / served.name / "config.pbtxt"
    if not path.is_file():
        return served
    try:
        previous = ServedHead.from_parameters(served.name, parameters_of(read_config(path)), where=str(path))
    except ParameterError:  # not a readable head ensemble: the export replaces it with one
        return served
    # prompts name class indices: they stay only while the classes are the same (a pinned or new version with
    # other classes loses them until `export prompts` is run for it)
    if (previous.prompt_model and previous.classes == served.classes
            and (repo / previous.prompt_model / "config.pbtxt").is_file()):
        served = replace(served, prompt_model=previous.prompt_model, prompt_classes=previous.prompt_classes)
    if previous.encoded_model and (repo / previous.encoded_model / "config.pbtxt").is_file():
        served = replace(served, encoded_model=previous.encoded_model)
    return served
