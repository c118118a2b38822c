"""The encoded-image variant of a head: ``<head>_encoded`` takes JPEG/PNG bytes instead of pixels.

Its first step, ``decode_<encoder>``, decodes and resizes with headserve's own preprocessing code,
vendored into the version directory (see ``decoder_model.py``), so a caller without headserve (curl,
another language) gets the same probabilities as one that resizes locally. The rest of the ensemble
is the head's own wiring. The head's ensemble publishes the variant's name as ``encoded_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

from headserve.errors import RepositoryError
from headserve.export.model_config import (
    DataType,
    EnsembleStep,
    ModelDesc,
    ProductionOptions,
    Runtime,
    TensorSpec,
    to_text,
)
from headserve.export.repository import LABELS_FILE, WrittenModel, publish_version, read_head_ensemble
from headserve.fsutil import write_text_atomic

DECODER_SOURCE = Path(__file__).with_name("decoder_model.py")
# headserve's preprocessing and what it imports, vendored beside the decoder's model.py.
VENDORED = ("encoders.py", "errors.py", "preprocess.py")
IMAGE_INPUT = "image"


def decoder_model_name(encoder_model: str) -> str:
    return "decode_" + encoder_model.removeprefix("encoder_")


def encoded_model_name(head: str) -> str:
    return f"{head}_encoded"


def _vendored_files() -> dict[str, Path | bytes]:
    import headserve

    root = Path(headserve.__file__).parent
    files: dict[str, Path | bytes] = {"model.py": DECODER_SOURCE,
                                      "headserve/__init__.py": b'"""headserve preprocessing, vendored by export."""\n'}
    files.update({f"headserve/{name}": root / name for name in VENDORED})
    return files


def add_encoded_input(repo: str | Path, head: str, runtime: Runtime | str = Runtime.LOCAL,
                      options: ProductionOptions | None = None) -> list[WrittenModel]:
    """Write the decoder of the head's encoder (once) and the head's encoded-image ensemble."""
    repo, runtime = Path(repo), Runtime(runtime)
    path = repo / head / "config.pbtxt"
    ensemble, params = read_head_ensemble(repo, head, "its encoded-image variant")
    if ensemble.platform != "ensemble" or "preprocess" not in params:
        raise RepositoryError(f"{path}: {head!r} is not a head ensemble written by headserve (no preprocess "
                              "parameter); pass a name `headserve repo list` shows as an ensemble")
    preprocess = json.loads(params["preprocess"])
    size = int(preprocess["input_size"])
    encoder = ensemble.ensemble_scheduling.step[0].model_name
    written: list[WrittenModel] = []
    decoder = decoder_model_name(encoder)
    if not (repo / decoder / "config.pbtxt").is_file():
        desc = ModelDesc(decoder, (TensorSpec(IMAGE_INPUT, DataType.TYPE_STRING, (1,)),),
                         (TensorSpec("pixels", DataType.TYPE_UINT8, (size, size, 3)),),
                         max_batch_size=ensemble.max_batch_size, python_model=True,
                         parameters={"preprocess": params["preprocess"]})
        version, vpath = publish_version(repo / decoder, desc, runtime, _vendored_files(), options=options)
        written.append(WrittenModel(decoder, version, vpath, {}))

    steps = [EnsembleStep(decoder, {IMAGE_INPUT: IMAGE_INPUT}, {"pixels": "pixels"})]
    steps += [EnsembleStep(s.model_name, dict(s.input_map), dict(s.output_map), s.model_version)
              for s in ensemble.ensemble_scheduling.step]
    outputs = tuple(TensorSpec(o.name, DataType(o.data_type), tuple(o.dims), o.label_filename or None)
                    for o in ensemble.output)
    name = encoded_model_name(head)
    desc = ModelDesc(name, (TensorSpec(IMAGE_INPUT, DataType.TYPE_STRING, (1,)),), outputs,
                     max_batch_size=ensemble.max_batch_size, steps=tuple(steps),
                     parameters={**params, "input": "encoded"})
    labels = (repo / head / LABELS_FILE).read_text().splitlines() if (repo / head / LABELS_FILE).is_file() else None
    version, vpath = publish_version(repo / name, desc, runtime, {}, labels)
    written.append(WrittenModel(name, version, vpath, {}))
    ensemble.parameters["encoded_model"].string_value = name
    write_text_atomic(path, to_text(ensemble))
    return written
