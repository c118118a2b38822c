"""Head artifact -> repository: the encoder it needs (exported once) plus the head and its ensemble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from headserve.artifact import check_encoder_match, load_meta, load_tensors, trained_encoder
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.errors import ArtifactError
from headserve.export.model_config import ProductionOptions, Runtime, parameters_of, parse
from headserve.export.repository import (
    WrittenModel,
    add_encoder,
    add_head,
    encoder_model_name,
    encoder_parameters,
)


def export_head(artifact: str | Path, repo: str | Path, runtime: str | Runtime = Runtime.LOCAL,
                encoder_name: str | None = None, encoder_weights: str | None = None,
                options: ProductionOptions | None = None, precision: str = "fp32",
                log: Callable[[str], None] = lambda line: None) -> list[WrittenModel]:
    """Export a head; exports its encoder first (at ``precision``) when the repository does not hold it yet,
    from the weights the head was trained with (``log`` says which)."""
    runtime = Runtime(runtime)
    repo = Path(repo)
    meta = load_meta(artifact)
    name = encoder_name or meta.encoder_name
    if not name:
        raise ArtifactError(
            f"{artifact}: the head names no registry encoder (encoder_model {meta.encoder_model!r}); "
            "pass --encoder NAME to say which encoder its embeddings came from"
        )
    written: list[WrittenModel] = []
    model = encoder_model_name(name)
    config_path = repo / model / "config.pbtxt"
    has_version = any(p.is_dir() and p.name.isdigit() for p in (repo / model).glob("*"))
    if config_path.is_file() and has_version:  # the repository serves this encoder already
        params = parameters_of(parse(config_path.read_text()))
    else:
        spec, source = trained_encoder(meta, name, encoder_weights)
        log(f"encoder {name}: weights {source}")
        loaded = load_encoder(spec)
        params = encoder_parameters(loaded, fingerprint(encoder_graph(loaded), loaded.spec.preprocess))
        # Refuse a mismatched head before anything is written.
        check_encoder_match(meta, params["encoder_type"], params["encoder_model"], int(params["embedding_dim"]),
                            params["encoder_fingerprint"], where=f"encoder {name}")
        written.append(add_encoder(repo, loaded, runtime, options=options, precision=precision))
    if meta.preprocess is None:  # legacy heads: their embeddings came through this encoder's preprocessing
        meta.preprocess = json.loads(params["preprocess"])
    meta.encoder_name = meta.encoder_name or name
    written.extend(add_head(repo, meta, load_tensors(artifact), model, runtime, encoder_params=params,
                            options=options))
    return written
