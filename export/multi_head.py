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

from tritonclient.grpc import model_config_pb2 as mc

from headserve.errors import RepositoryError
from headserve.export.model_config import DataType, EnsembleStep, ModelDesc, Runtime, TensorSpec, parse
from headserve.export.onnx_export import ENCODER_HEAD_FEED, ENCODER_INPUT, ENCODER_OUTPUT, HEAD_INPUT
from headserve.export.repository import LABELS_FILE, WrittenModel, publish_version
from headserve.fsutil import write_text_atomic

SEPARATOR = "__"  # "<head>__<output>": head names are model names, which never contain it by convention
SHARED_KEYS = ("encoder_type", "encoder_model", "encoder_name", "embedding_dim", "encoder_fingerprint", "preprocess")


def multi_head_model_name(encoder_model: str) -> str:
    return "heads_" + encoder_model.removeprefix("encoder_")


def output_name(head: str, output: str) -> str:
    return f"{head}{SEPARATOR}{output}"


def _ensemble(repo: Path, head: str) -> mc.ModelConfig:
    path = repo / head / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist: head {head!r} is not in {repo}; export it first with "
                              "`headserve export head`")
    config = parse(path.read_text())
    if config.platform != "ensemble" or len(config.ensemble_scheduling.step) != 2:
        raise RepositoryError(f"{path}: {head!r} is not a per-head ensemble (encoder step, head step); "
                              "pass the names that `headserve repo list` shows as ensembles")
    return config


def write_multi_head_ensemble(repo: str | Path, heads: Sequence[str], runtime: Runtime | str = Runtime.LOCAL,
                              name: str | None = None) -> WrittenModel:
    """Write (the next version of) the ensemble running one encoder pass for all ``heads``."""
    repo, runtime = Path(repo), Runtime(runtime)
    if len(set(heads)) != len(heads) or not heads:
        raise RepositoryError(f"heads {list(heads)} must be distinct and at least one")
    configs = {h: _ensemble(repo, h) for h in heads}
    encoders = {h: c.ensemble_scheduling.step[0].model_name for h, c in configs.items()}
    if len(set(encoders.values())) != 1:
        raise RepositoryError(f"heads run on different encoders ({encoders}); one multi-head ensemble serves the "
                              "heads of one encoder: group them by encoder")
    encoder = next(iter(encoders.values()))
    first = configs[heads[0]]
    steps = [EnsembleStep(encoder, {ENCODER_INPUT: ENCODER_INPUT},
                          {ENCODER_OUTPUT: ENCODER_OUTPUT, ENCODER_HEAD_FEED: ENCODER_HEAD_FEED})]
    outputs: list[TensorSpec] = []
    labels: dict[str, str] = {}
    for head, config in configs.items():
        head_step = config.ensemble_scheduling.step[1]
        steps.append(EnsembleStep(head_step.model_name, {HEAD_INPUT: ENCODER_HEAD_FEED},
                                  {k: output_name(head, v) for k, v in head_step.output_map.items()},
                                  version=head_step.model_version))  # the head version whose classes it copies
        for out in config.output:
            if out.name == ENCODER_OUTPUT:
                continue
            label_file = f"{head}_{LABELS_FILE}" if out.label_filename else None
            if label_file:
                labels[label_file] = (repo / head / out.label_filename).read_text()
            outputs.append(TensorSpec(output_name(head, out.name), DataType(out.data_type), tuple(out.dims), label_file))
    embedding = next(o for o in first.output if o.name == ENCODER_OUTPUT)
    outputs.append(TensorSpec(ENCODER_OUTPUT, DataType(embedding.data_type), tuple(embedding.dims)))
    params = {k: first.parameters[k].string_value for k in SHARED_KEYS if k in first.parameters}
    params["heads"] = json.dumps(list(heads))
    params["head_parameters"] = json.dumps(
        {h: {k: v.string_value for k, v in c.parameters.items() if k not in SHARED_KEYS} for h, c in configs.items()},
        sort_keys=True)
    pixels = first.input[0]
    desc = ModelDesc(
        name=name or multi_head_model_name(encoder),
        inputs=(TensorSpec(pixels.name, DataType(pixels.data_type), tuple(pixels.dims)),),
        outputs=tuple(outputs),
        max_batch_size=min(c.max_batch_size for c in configs.values()),
        steps=tuple(steps),
        parameters=params,
    )
    model_dir = repo / desc.name
    for file, text in labels.items():
        write_text_atomic(model_dir / file, text)
    version, path = publish_version(model_dir, desc, runtime, {})
    return WrittenModel(desc.name, version, path, {})
