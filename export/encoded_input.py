"""The encoded-image variant of a head: ``<head>_encoded`` takes JPEG/PNG bytes instead of pixels.

Its first step, ``decode_<encoder>``, decodes and resizes with headserve's own preprocessing code,
vendored into the version directory (see ``decoder_model.py``), so a caller without headserve (curl,
another language) gets the same probabilities as one that resizes locally. The rest of the ensemble
is the head's own wiring. The head's ensemble publishes the variant's name as ``encoded_model``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from headserve.contract import IMAGE, PIXELS, ServedHead, decoder_model_name, encoded_model_name
from headserve.errors import RepositoryError
from headserve.export.model_config import (
    DataType,
    EnsembleStep,
    ModelDesc,
    ProductionOptions,
    Runtime,
    TensorSpec,
)
from headserve.export.repository import (
    EnsembleWiring,
    WrittenModel,
    head_ensemble_desc,
    publish_version,
    read_served_head,
    rewrite_head_ensemble,
)

DECODER_SOURCE = Path(__file__).with_name("decoder_model.py")
# headserve's preprocessing and what it imports, vendored beside the decoder's model.py.
VENDORED = ("contract.py", "encoders.py", "errors.py", "preprocess.py")
__all__ = ["encoded_ensemble_desc", "add_encoded_input"]


def _vendored_files() -> dict[str, Path | bytes]:
    import headserve

    root = Path(headserve.__file__).parent
    files: dict[str, Path | bytes] = {"model.py": DECODER_SOURCE,
                                      "headserve/__init__.py": b'"""headserve preprocessing, vendored by export."""\n'}
    files.update({f"headserve/{name}": root / name for name in VENDORED})
    return files


def encoded_ensemble_desc(served: ServedHead, wiring: EnsembleWiring, decoder: str) -> ModelDesc:
    """``<head>_encoded``, rendered from the head's record: the decoder, then the head ensemble's own steps."""
    pixels = head_ensemble_desc(replace(served, name=encoded_model_name(served.name), encoded_input=True), wiring)
    return replace(pixels, inputs=(TensorSpec(IMAGE, DataType.TYPE_STRING, (1,)),),
                   steps=(EnsembleStep(decoder, {IMAGE: IMAGE}, {PIXELS: PIXELS}), *pixels.steps))


def add_encoded_input(repo: str | Path, head: str, runtime: Runtime | str = Runtime.LOCAL,
                      options: ProductionOptions | None = None) -> list[WrittenModel]:
    """Write the decoder of the head's encoder (once) and the head's encoded-image ensemble."""
    repo, runtime = Path(repo), Runtime(runtime)
    served, wiring = read_served_head(repo, head, "its encoded-image variant")
    if served.encoder.region is not None:  # its encoder takes a letterboxed frame and boxes, not decoded crops
        raise RepositoryError(f"head {head!r} is a region head ({served.encoder.mode}): its ensemble takes an image "
                              "and its boxes, which `classify_regions` letterboxes on the client; an encoded-image "
                              "variant decodes crops and has no boxes to send")
    size = served.preprocess.input_size
    written: list[WrittenModel] = []
    decoder = decoder_model_name(wiring.encoder_model)
    if not (repo / decoder / "config.pbtxt").is_file():
        desc = ModelDesc(decoder, (TensorSpec(IMAGE, DataType.TYPE_STRING, (1,)),),
                         (TensorSpec(PIXELS, DataType.TYPE_UINT8, (size, size, 3)),),
                         max_batch_size=wiring.max_batch_size, python_model=True,
                         parameters={"preprocess": served.preprocess.to_json()})
        version, vpath = publish_version(repo / decoder, desc, runtime, _vendored_files(), options=options)
        written.append(WrittenModel(decoder, version, vpath, {}))

    desc = encoded_ensemble_desc(served, wiring, decoder)
    version, vpath = publish_version(repo / desc.name, desc, runtime, {}, list(served.classes))
    written.append(WrittenModel(desc.name, version, vpath, {}))
    rewrite_head_ensemble(repo, replace(served, encoded_model=desc.name), wiring)
    return written
