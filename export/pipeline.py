"""Head artifact -> repository: the encoder it needs (exported once) plus the head and its ensemble."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from headserve.artifact import WEIGHTS_FILE, HeadMeta, check_encoder_match, load_meta, load_tensors, trained_encoder
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.contract import HEAD_FEED, EncoderIdentity, ServedHead, encoder_model_name
from headserve.encoders import get_encoder
from headserve.errors import ArtifactError, EncoderMismatchError, RepositoryError, UnknownEncoderError
from headserve.export.model_config import ProductionOptions, Runtime, parameters_of, parse
from headserve.export.repository import (
    HeadGraph,
    WrittenModel,
    add_encoder,
    add_head,
    encoder_parameters,
    export_head_graph,
)
from headserve.head import ServingHead
from headserve.head_file import serving_head
from headserve.lockfile import check_repository_path, repository_lock


def export_head(artifact: str | Path, repo: str | Path, runtime: str | Runtime = Runtime.LOCAL,
                encoder_name: str | None = None, encoder_weights: str | None = None,
                options: ProductionOptions | None = None, precision: str = "fp32",
                log: Callable[[str], None] = lambda line: None) -> list[WrittenModel]:
    """Export a head; exports its encoder first (at ``precision``) when the repository does not hold it yet,
    from the weights the head was trained with (``log`` says which).

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
    name = encoder_name or meta.encoder_name
    if not name:
        raise ArtifactError(
            f"{artifact}: the head names no registry encoder (encoder_model {meta.encoder_model!r}); "
            "name the registry encoder its embeddings came from (encoder_name)"
        ).about("encoder_name")
    _check_width(meta, name)
    module = serving_head(meta, tensors, origin=str(Path(artifact) / WEIGHTS_FILE))
    with tempfile.TemporaryDirectory(prefix="headserve-export-") as scratch:
        graph = export_head_graph(meta, module, Path(scratch))
        with repository_lock(Path(repo)):
            return _export_head(meta, module, graph, name, Path(repo), Runtime(runtime), encoder_weights, options,
                                precision, log)


def _export_head(meta: HeadMeta, module: ServingHead, graph: HeadGraph, name: str, repo: Path, runtime: Runtime,
                 encoder_weights: str | None, options: ProductionOptions | None, precision: str,
                 log: Callable[[str], None]) -> list[WrittenModel]:
    written: list[WrittenModel] = []
    model = encoder_model_name(name)
    config_path = repo / model / "config.pbtxt"
    has_version = any(p.is_dir() and p.name.isdigit() for p in (repo / model).glob("*"))
    loaded = None
    if config_path.is_file() and has_version:  # the repository serves this encoder already
        _check_served_encoder(repo / model, name)
        params = parameters_of(parse(config_path.read_text()))
    else:
        spec, source = trained_encoder(meta, name, encoder_weights)
        log(f"encoder {name}: weights {source}")
        loaded = load_encoder(spec)
        params = encoder_parameters(loaded, fingerprint(encoder_graph(loaded), loaded.spec.preprocess))
    # Refuse, before anything is written: a head trained on another encoder (naming both).
    check_encoder_match(meta, EncoderIdentity.from_parameters(params, f"encoder {name}"), where=f"encoder {name}")
    if loaded is not None:
        written.append(add_encoder(repo, loaded, runtime, options=options, precision=precision))
    if meta.preprocess is None:  # legacy heads: their embeddings came through this encoder's preprocessing
        served_preprocess = EncoderIdentity.from_parameters(params, str(config_path)).preprocess
        if served_preprocess is None:
            raise RepositoryError(f"{config_path}: encoder {name} publishes no preprocess parameter, and head "
                                  f"{meta.name!r} records none either; re-export the encoder with "
                                  f"`headserve export encoder {name}`")
        meta.preprocess = served_preprocess.to_dict()
    meta.encoder_name = meta.encoder_name or name
    written.extend(add_head(repo, meta, module, model, runtime, encoder_params=params,
                            options=options, graph=graph))
    written.extend(_refresh_dependents(repo, meta.name, runtime, options))
    return written


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
    if ServedHead.from_parameters(head, parameters_of(parse(path.read_text())), where=str(path)).encoded_model:
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
