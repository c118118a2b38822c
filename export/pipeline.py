"""Head artifact -> repository: the encoder it needs (exported once) plus the head and its ensemble."""

from __future__ import annotations

import json
from pathlib import Path

from headserve.artifact import check_encoder_match, load_meta, load_tensors
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.encoders import get_encoder
from headserve.errors import ArtifactError, RepositoryError
from headserve.export.model_config import ProductionOptions, Runtime, parameters_of, parse
from headserve.export.onnx_export import ENCODER_HEAD_FEED
from headserve.export.repository import (
    WrittenModel,
    add_encoder,
    add_head,
    encoder_model_name,
    encoder_parameters,
)
from headserve.lockfile import check_repository_path, repository_lock


def export_head(artifact: str | Path, repo: str | Path, runtime: str | Runtime = Runtime.LOCAL,
                encoder_name: str | None = None, encoder_weights: str | None = None,
                options: ProductionOptions | None = None, precision: str = "fp32") -> list[WrittenModel]:
    """Export a head; exports its encoder first (at ``precision``) when the repository does not hold it yet."""
    runtime = Runtime(runtime)
    repo = Path(repo)
    check_repository_path(repo)
    meta = load_meta(artifact)
    name = encoder_name or meta.encoder_name
    if not name:
        raise ArtifactError(
            f"{artifact}: the head names no registry encoder (encoder_model {meta.encoder_model!r}); "
            "pass --encoder NAME to say which encoder its embeddings came from"
        )
    tensors = load_tensors(artifact)  # a broken weights file is refused before the repository is touched
    with repository_lock(repo):  # the encoder check, its export and the head's publish are one writer's step
        return _export_head_locked(artifact, repo, meta, tensors, name, runtime, encoder_weights, options, precision)


def _export_head_locked(artifact: str | Path, repo: Path, meta, tensors, name: str, runtime: Runtime,
                        encoder_weights: str | None, options: ProductionOptions | None,
                        precision: str) -> list[WrittenModel]:
    written: list[WrittenModel] = []
    model = encoder_model_name(name)
    config_path = repo / model / "config.pbtxt"
    versions = sorted((int(p.name) for p in (repo / model).glob("*") if p.is_dir() and p.name.isdigit()))
    if config_path.is_file() and versions:  # the repository serves this encoder already
        _check_served_encoder(repo / model / str(versions[-1]), name)
        params = parameters_of(parse(config_path.read_text()))
    else:
        spec = get_encoder(name)
        if encoder_weights:
            spec = spec.with_weights(encoder_weights)
        loaded = load_encoder(spec)
        params = encoder_parameters(loaded, fingerprint(encoder_graph(loaded), loaded.spec.preprocess))
        # Refuse a mismatched head before anything is written.
        check_encoder_match(meta, params["encoder_type"], params["encoder_model"], int(params["embedding_dim"]),
                            params["encoder_fingerprint"], where=f"encoder {name}")
        written.append(add_encoder(repo, loaded, runtime, options=options, precision=precision))
    if meta.preprocess is None:  # legacy heads: their embeddings came through this encoder's preprocessing
        meta.preprocess = json.loads(params["preprocess"])
    meta.encoder_name = meta.encoder_name or name
    written.extend(add_head(repo, meta, tensors, model, runtime, encoder_params=params, options=options))
    return written


def _check_served_encoder(version_dir: Path, name: str) -> None:
    """Refuse to build a head on a served encoder version whose ``model.onnx`` is not a loadable encoder graph.

    Triton would fail to load it only at serving time; the head and ensemble would be written on a base
    that cannot answer.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = version_dir / "model.onnx"
    fix = (f"remove {version_dir} (or the whole {version_dir.parent.name} directory) and export again, which "
           f"re-exports encoder {name}, or run `headserve export encoder {name} --repo {version_dir.parent.parent}`")
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist, so encoder {name} in the repository has no graph; {fix}")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise RepositoryError(f"{path} is not an ONNX model ({type(exc).__name__}); {fix}") from None
    outputs = {o.name for o in graph.graph.output}
    if not graph.graph.node or ENCODER_HEAD_FEED not in outputs:
        raise RepositoryError(f"{path} is not a headserve encoder graph (outputs {sorted(outputs) or 'none'}, "
                              f"expected {ENCODER_HEAD_FEED!r}); {fix}")
