"""One encoder pass for every head of an encoder: the multi-head ensemble.

Per-head ensembles (``<head>``) each run the encoder; a caller that wants several heads' answers for
the same crops would pay for the encoder once per head. ``heads_<encoder>`` runs the encoder once and
fans its embedding out to every listed head, publishing each head's outputs as ``<head>__<output>``
(and ``<head>__probs`` with that head's labels file). It is built from the per-head ensembles already
in the repository, so it carries exactly their wiring and parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from headserve.contract import (
    EMBEDDING,
    HEAD_FEED,
    IDENTITY_KEYS,
    LABELS_FILE,
    MULTI_HEAD_SEPARATOR,
    PIXELS,
    ServedHead,
    multi_head_model_name,
    multi_head_output_name,
)
from headserve.errors import RepositoryError
from headserve.export.model_config import DataType, EnsembleStep, ModelDesc, Runtime, TensorSpec, parameters_of, read_config
from headserve.export.repository import EnsembleWiring, WrittenModel, head_outputs, publish_version, read_served_head
from headserve.fsutil import write_text_atomic

# SEPARATOR, SHARED_KEYS, multi_head_model_name and output_name are re-exported from headserve.contract.
SEPARATOR = MULTI_HEAD_SEPARATOR
SHARED_KEYS = IDENTITY_KEYS  # the encoder's identity, published once; every other parameter is per head
output_name = multi_head_output_name
__all__ = ["SEPARATOR", "SHARED_KEYS", "multi_head_model_name", "output_name", "write_multi_head_ensemble",
           "multi_head_ensembles"]


def _served(repo: Path, head: str) -> tuple[ServedHead, EnsembleWiring]:
    path = repo / head / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist: head {head!r} is not in {repo}; export it first with "
                              "`headserve export head`")
    return read_served_head(repo, head, "its multi-head ensemble")


def write_multi_head_ensemble(repo: str | Path, heads: Sequence[str], runtime: Runtime | str = Runtime.LOCAL,
                              name: str | None = None) -> WrittenModel:
    """Write (the next version of) the ensemble running one encoder pass for all ``heads``."""
    repo, runtime = Path(repo), Runtime(runtime)
    if len(set(heads)) != len(heads) or not heads:
        raise RepositoryError(f"heads {list(heads)} must be distinct and at least one")
    served = {h: _served(repo, h) for h in heads}
    encoders = {h: wiring.encoder_model for h, (_, wiring) in served.items()}
    if len(set(encoders.values())) != 1:
        raise RepositoryError(f"heads run on different encoders ({encoders}); one multi-head ensemble serves the "
                              "heads of one encoder: group them by encoder")
    encoder = next(iter(encoders.values()))
    first, _ = served[heads[0]]
    steps = [EnsembleStep(encoder, {PIXELS: PIXELS}, {EMBEDDING: EMBEDDING, HEAD_FEED: HEAD_FEED})]
    outputs: list[TensorSpec] = []
    labels: dict[str, str] = {}
    for head, (record, wiring) in served.items():
        steps.append(EnsembleStep(wiring.head_model, {EMBEDDING: HEAD_FEED},
                                  {o: output_name(head, o) for o in wiring.head_outputs},
                                  version=wiring.head_version))  # the head version whose classes it copies
        label_file = f"{head}_{LABELS_FILE}"
        labels[label_file] = "\n".join(record.classes) + "\n"
        outputs.extend(head_outputs(record, wiring, lambda o, h=head, f=label_file: (output_name(h, o), f)))
    outputs.append(TensorSpec(EMBEDDING, DataType.TYPE_FP32, (first.embedding_dim,)))
    params = {k: v for k, v in first.to_parameters().items() if k in SHARED_KEYS}
    params["heads"] = json.dumps(list(heads))
    params["head_parameters"] = json.dumps(
        {h: {k: v for k, v in record.to_parameters().items() if k not in SHARED_KEYS}
         for h, (record, _) in served.items()},
        sort_keys=True)
    size = first.preprocess.input_size
    desc = ModelDesc(
        name=name or multi_head_model_name(encoder),
        inputs=(TensorSpec(PIXELS, DataType.TYPE_UINT8, (size, size, 3)),),
        outputs=tuple(outputs),
        max_batch_size=min(wiring.max_batch_size for _, wiring in served.values()),
        steps=tuple(steps),
        parameters=params,
    )
    if first.encoder.region is not None:  # region heads: image and boxes in, one row per box out
        from headserve.export.region_ensemble import multi_head_region_desc

        desc = multi_head_region_desc(desc, first.encoder.region, min(w.max_batch_size for _, w in served.values()))
    model_dir = repo / desc.name
    for file, text in labels.items():
        write_text_atomic(model_dir / file, text)
    version, path = publish_version(model_dir, desc, runtime, {})
    return WrittenModel(desc.name, version, path, {})


def multi_head_ensembles(repo: Path) -> dict[str, list[str]]:
    """Every multi-head ensemble in ``repo`` and the heads it serves (its ``heads`` parameter)."""
    found: dict[str, list[str]] = {}
    for config_path in sorted(Path(repo).glob("*/config.pbtxt")):
        heads = parameters_of(read_config(config_path)).get("heads")
        if heads:
            found[config_path.parent.name] = list(json.loads(heads))
    return found
