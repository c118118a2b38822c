"""Head artifact -> repository: the encoder it needs (exported once) plus the head and its ensemble."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from headserve.artifact import WEIGHTS_FILE, HeadMeta, load_meta, load_tensors, trained_encoder
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.contract import HEAD_FEED, EncoderIdentity, ServedHead, encoder_model_name
from headserve.encoders import get_encoder
from headserve.errors import ArtifactError, EncoderMismatchError, RepositoryError, UnknownEncoderError
from headserve.export.engine import (
    DEFAULT_ENGINE,
    MIN_COSINE,
    EngineChoice,
    choose_engine,
    combined_min_cosine,
    served_engine,
    trained_engine,
)
from headserve.export.errors import EngineMismatchError
from headserve.export.fingerprint_file import FINGERPRINT_FILE, read_fingerprint
from headserve.export.model_config import InstanceKind, ProductionOptions, Runtime, RuntimeOptions, parameters_of, read_config
from headserve.export.repository import (
    HeadGraph,
    WrittenModel,
    add_encoder,
    add_head,
    encoder_parameters,
    export_head_graph,
)
from headserve.head import ServingHead, serving_head
from headserve.lockfile import check_repository_path, repository_lock


def export_head(artifact: str | Path, repo: str | Path, runtime: str | Runtime = Runtime.LOCAL,
                encoder_name: str | None = None, encoder_weights: str | None = None,
                options: ProductionOptions | None = None, precision: str = "auto",
                log: Callable[[str], None] = lambda line: None, engine: str = "auto") -> list[WrittenModel]:
    """Export a head; exports its encoder first (on ``engine`` at ``precision``) when the repository does not
    hold it yet, from the weights the head was trained with (``log`` says which, and which engine).

    ``engine`` and ``precision`` "auto" serve the encoder on the engine and precision the head's embeddings
    were computed with (meta.json), so the served head sees what it was trained on. A head whose training
    engine and the repository's encoder disagree beyond the parity check is refused, naming both.

    The artifact is read and its graph checked before the repository is created or locked; a failure
    after that (an encoder that does not match, a refused encoder export) leaves no new directory
    behind (``repository_lock`` removes a repository it created).

    The export is the repository's only writer: the check for its encoder, the encoder's export and
    the head's publish happen under the repository's lock, so two exports at once neither take one
    version nor both export the encoder.
    """
    check_repository_path(Path(repo))
    # Everything that depends on the artifact alone is read and checked before the repository is created or
    # locked: meta.json (its preprocessing spec included), the weights against the digest meta.json recorded,
    # the module they build, and its ONNX graph against PyTorch. A refused head leaves the repository as it was.
    meta = load_meta(artifact)
    tensors = load_tensors(artifact, meta)
    name = encoder_name or meta.encoder.name
    if not name:
        raise ArtifactError(
            f"{artifact}: the head names no registry encoder (encoder_model {meta.encoder.model!r}); "
            "name the registry encoder its embeddings came from (encoder_name)"
        ).about("encoder_name")
    _check_width(meta, name)
    module = serving_head(meta, tensors, origin=str(Path(artifact) / WEIGHTS_FILE))
    with tempfile.TemporaryDirectory(prefix="headserve-export-") as scratch:
        graph = export_head_graph(meta, module, Path(scratch))
        with repository_lock(Path(repo)):
            if meta.encoder.region is not None:  # one pass per image, boxes pooled: its own encoder and ensemble
                from headserve.export.region_ensemble import export_region_head

                written = export_region_head(meta, module, graph, name, Path(repo), Runtime(runtime),
                                             encoder_weights, options, log)
                return written + _refresh_dependents(Path(repo), meta.name, Runtime(runtime), options)
            return _export_head(meta, module, graph, name, Path(repo), Runtime(runtime), encoder_weights, options,
                                precision, engine, log)


def _export_head(meta: HeadMeta, module: ServingHead, graph: HeadGraph, name: str, repo: Path, runtime: Runtime,
                 encoder_weights: str | None, options: ProductionOptions | None, precision: str, engine: str,
                 log: Callable[[str], None]) -> list[WrittenModel]:
    written: list[WrittenModel] = []
    model = encoder_model_name(name)
    config_path = repo / model / "config.pbtxt"
    has_version = any(p.is_dir() and p.name.isdigit() for p in (repo / model).glob("*"))
    loaded = None
    choice = None
    if config_path.is_file() and has_version:  # the repository serves this encoder already
        _check_served_encoder(repo / model, name)
        params = parameters_of(read_config(config_path))
        served = (*served_engine(params), _served_min_cosine(repo / model, params))
    else:
        gpu = (options or RuntimeOptions()).kind_for(runtime) is InstanceKind.KIND_GPU
        choice = head_engine_choice(meta.extra, engine, precision, gpu)
        served = (choice.engine, choice.precision, MIN_COSINE[choice.precision] if choice.precision != "fp32" else 1.0)
        spec, source = trained_encoder(meta, name, encoder_weights)
        log(f"encoder {name}: weights {source}")
        loaded = load_encoder(spec)
        encoder_fp = fingerprint(encoder_graph(loaded), loaded.spec.preprocess)  # once: add_encoder publishes it
        params = encoder_parameters(loaded, encoder_fp)
    # Refuse, before anything is written: a head trained on another encoder (naming both). The one check of the
    # call: add_head publishes onto the encoder checked here.
    encoder = EncoderIdentity.from_parameters(params, f"encoder {name}")
    meta.encoder.require_match(encoder, meta.name, where=f"encoder {name}")
    check_training_engine(meta.name, trained_engine(meta.extra), served, where=str(config_path))
    if loaded is not None:
        written.append(add_encoder(repo, loaded, runtime, options=options, choice=choice, decide=_decide(module),
                                   log=log, encoder_fingerprint=encoder_fp))
    if meta.encoder.preprocess is None:  # legacy heads: their embeddings came through this encoder's preprocessing
        if encoder.preprocess is None:
            raise RepositoryError(f"{config_path}: encoder {name} publishes no preprocess parameter, and head "
                                  f"{meta.name!r} records none either; re-export the encoder with "
                                  f"`headserve export encoder {name}`")
        meta.encoder = replace(meta.encoder, preprocess=encoder.preprocess)
    meta.encoder = replace(meta.encoder, name=meta.encoder.name or name)
    written.extend(add_head(repo, meta, module, model, runtime, options=options, graph=graph))
    written.extend(_refresh_dependents(repo, meta.name, runtime, options))
    return written


def head_engine_choice(extra: dict, engine: str, precision: str, gpu: bool) -> EngineChoice:
    """The engine a head's new encoder is exported for: asked for, or ("auto") the one its embeddings came from."""
    if engine != "auto" or precision != "auto":
        return choose_engine(engine, precision, gpu)
    trained, trained_precision, _ = trained_engine(extra)
    if trained == "openvino" and not gpu:
        return EngineChoice("openvino", trained_precision, f"openvino {trained_precision}: the engine the head's "
                                                           "embeddings were computed with (meta.json)")
    return EngineChoice(DEFAULT_ENGINE, "fp32", f"{DEFAULT_ENGINE} fp32: the head's embeddings came from {trained} "
                                                f"{trained_precision} (train with --engine openvino --precision bf16 "
                                                "to serve bf16 on a CPU)")


def check_training_engine(head: str, trained: tuple[str, str, float], served: tuple[str, str, float],
                          where: str) -> None:
    """Refuse a head whose embeddings' engine and the encoder serving it disagree beyond the parity check.

    Each side is (engine, precision, min cosine to the fp32 PyTorch encoder). Both fp32 sides are one
    computation up to summation order; otherwise the two angles to fp32 add up at worst
    (``combined_min_cosine``), and that bound must keep bf16's minimum cosine.
    """
    (t_engine, t_precision, t_cos), (s_engine, s_precision, s_cos) = trained, served
    if (t_engine, t_precision) == (s_engine, s_precision) or t_precision == s_precision == "fp32":
        return
    bound = combined_min_cosine(t_cos, s_cos)
    if bound < MIN_COSINE["bf16"]:
        raise EngineMismatchError(
            f"{where}: head {head!r} was trained on {t_engine} {t_precision} embeddings (min cosine {t_cos:.5f} to "
            f"fp32) but the encoder serves {s_engine} {s_precision} (min cosine {s_cos:.5f}); together they may "
            f"differ down to cosine {bound:.5f}, below {MIN_COSINE['bf16']}. Retrain the head with `engine` "
            f"{s_engine if s_engine != DEFAULT_ENGINE else 'torch'} `precision` {s_precision}, or export its encoder "
            f"on {t_engine if t_engine != 'torch' else DEFAULT_ENGINE} into another repository")


def _served_min_cosine(model_dir: Path, params: dict[str, str]) -> float:
    """The served encoder's min cosine to fp32 from its newest fingerprint.json; fp32 without figures is exact."""
    engine, precision = served_engine(params)
    newest = max(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())
    record = read_fingerprint(model_dir / str(newest) / FINGERPRINT_FILE) or {}
    check = record.get("engine_check")
    if isinstance(check, dict) and isinstance(check.get("min_cosine"), (int, float)):
        return float(check["min_cosine"])
    return 1.0 if precision == "fp32" else MIN_COSINE.get(precision, 0.0)


def _decide(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The head's calibrated probabilities of (N, D) embeddings, for the engine check's top-1 agreement."""
    import torch

    def decide(emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)))[1].numpy()

    return decide


def _check_width(meta: HeadMeta, name: str) -> None:
    """The registry gives the encoder's width without loading it, so a head of another width is refused first,
    naming both widths (the full identity, fingerprint included, is compared once the encoder is at hand)."""
    try:
        width = get_encoder(name).embedding_dim
    except UnknownEncoderError:  # a repository may serve an encoder this registry lacks: compared under the lock
        return
    if width != meta.embedding_dim:
        raise EncoderMismatchError(
            f"head {meta.name!r} was trained on embeddings of embedding_dim {meta.embedding_dim} (its meta.json), "
            f"but encoder {name} gives embedding_dim {width}. Retrain the head on this encoder's embeddings or "
            "serve it with the encoder it was trained on.")


def _refresh_dependents(repo: Path, head: str, runtime: Runtime, options: ProductionOptions | None,
                        ) -> list[WrittenModel]:
    """New versions of the ensembles that copied this head's classes (its encoded-image variant, the
    multi-head ensembles it is part of), pinned to the head version just written. Their old versions
    stay pinned to the old head, which the head's version policy keeps loaded for one more swap."""
    from headserve.export.encoded_input import add_encoded_input
    from headserve.export.multi_head import multi_head_ensembles, write_multi_head_ensemble

    written: list[WrittenModel] = []
    path = repo / head / "config.pbtxt"
    if ServedHead.from_parameters(head, parameters_of(read_config(path)), where=str(path)).encoded_model:
        written.extend(add_encoded_input(repo, head, runtime, options))
    for ensemble, heads in multi_head_ensembles(repo).items():
        if head in heads:
            written.append(write_multi_head_ensemble(repo, heads, runtime, ensemble))
    return written


def _check_served_encoder(model_dir: Path, name: str) -> None:
    """Refuse to build a head on a served encoder whose latest ``model.onnx`` is not an encoder graph.

    Triton would fail to load it only at serving time, after the head and ensemble were written on a
    base that cannot answer.
    """
    import onnx
    from google.protobuf.message import DecodeError

    version_dir = model_dir / str(max(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()))
    path = version_dir / "model.onnx"
    fix = (f"remove {version_dir} (or the whole {model_dir.name} directory) and export again, which re-exports "
           f"encoder {name}, or run `headserve export encoder {name} --repo {model_dir.parent}`")
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist, so encoder {name} in the repository has no graph; {fix}")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise RepositoryError(f"{path} is not an ONNX model ({type(exc).__name__}); {fix}") from None
    outputs = {o.name for o in graph.graph.output}
    if not graph.graph.node or HEAD_FEED not in outputs:
        raise RepositoryError(f"{path} is not a headserve encoder graph (outputs {sorted(outputs) or 'none'}, "
                              f"expected {HEAD_FEED!r}); {fix}")
