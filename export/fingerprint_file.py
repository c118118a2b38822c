"""The encoder fingerprint file that every encoder version directory carries.

``fingerprint.json`` records the sha256 of the exported weights and preprocessing next to the ONNX
file it describes, so a repository can be checked (``repo validate``) and a head refused
(``export head``) without loading any weights. It also records the engine and precision that serve
the file and the figures of the check that admitted them (export/engine.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from headserve.contract import EncoderIdentity, MissingParameterError
from headserve.errors import RepositoryError

FINGERPRINT_FILE = "fingerprint.json"


def fingerprint_record(params: Mapping[str, str], check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields of an encoder's parameters that identify it (its ``EncoderIdentity``), its engine and
    precision, and ``check``: the figures of the engine's parity check (``ParityFigures``), when one ran."""
    for key in ("encoder_fingerprint", "encoder_type", "encoder_model", "embedding_dim"):
        if not params.get(key):  # an encoder model always publishes these; a fingerprint file without one is useless
            raise MissingParameterError(f"encoder parameters have no {key!r}; export the encoder with "
                                        "`headserve export encoder`", key)
    identity = EncoderIdentity.from_parameters(params, "encoder", read_preprocess=False)
    return {
        "fingerprint": identity.fingerprint,
        "encoder_name": identity.name or "",
        "encoder_type": identity.encoder_type,
        "encoder_model": identity.model,
        "embedding_dim": identity.embedding_dim,
        # as published, so the file records exactly the preprocessing the config declares
        "preprocess": json.loads(params.get("preprocess", "null")),
        "engine": params.get("engine", "onnxruntime"),  # encoders exported before engines ran ONNX Runtime
        "precision": params.get("precision", "fp32"),
        "engine_check": dict(check) if check is not None else None,
    }


def fingerprint_bytes(params: Mapping[str, str], check: Mapping[str, Any] | None = None) -> bytes:
    return (json.dumps(fingerprint_record(params, check), indent=2, sort_keys=True) + "\n").encode()


class FingerprintFileError(RepositoryError):
    """A fingerprint.json that exists but does not read as a record: cut short by a copy, or edited by hand.

    Read as absent, it would let ``repo validate`` pass a version whose weights nothing vouches for and let
    ``export head`` take the default engine figures instead of the recorded ones.
    """


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when the version has no such file (exported before fingerprint files)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise FingerprintFileError(f"{path}: cannot be read ({exc}); export the encoder again") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FingerprintFileError(f"{path}: is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}; "
                                   f"{len(text)} bytes, cut short?); export the encoder again") from None
    if not isinstance(record, dict):
        raise FingerprintFileError(f"{path}: holds a JSON {type(record).__name__}, not a fingerprint record; "
                                   "export the encoder again")
    return record
