"""Head artifacts on disk: ``meta.json`` beside ``head.safetensors``; never pickle.

The meta carries everything serving needs to pair a head with its encoder and to interpret its
outputs. Readers are lenient about age: a head saved before encoder metadata existed reads as a CLIP
head (``encoder_type`` defaults to ``clip``) and old field names (``clip_model``, ``labelmap``) map to
new ones. Writers are strict and atomic: an artifact directory is built beside its target and renamed
into place, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from headserve.contract import EncoderIdentity
from headserve.encoders import DEFAULT_ENCODER_TYPE, EncoderSpec, PreprocessSpec, get_encoder
from headserve.errors import (
    ArtifactError,
    EncoderLoadError,
    PreprocessSpecError,
    UnverifiedWeightsWarning,
    WeightsMismatchError,
)
from headserve.fsutil import publish_dir, staging_dir

META_FILE = "meta.json"
WEIGHTS_FILE = "head.safetensors"
FORMAT = "headserve.head/1"

# What each meta.json field holds, as JSON reads it: a field of another kind (classes: 5) is refused by
# name instead of failing deep inside whatever reads it first. A name absent here is not checked.
_TEXT, _NUMBER, _WHOLE, _MAP, _LIST = "text", "a number", "a whole number", "a JSON object", "a JSON list"
FIELD_KINDS: Mapping[str, tuple[str, bool]] = {  # field -> (kind, None allowed)
    "name": (_TEXT, False), "encoder_type": (_TEXT, False), "encoder_model": (_TEXT, False),
    "embedding_dim": (_WHOLE, False), "classes": (_LIST, False), "background_indices": (_LIST, False),
    "head_type": (_TEXT, False), "head_config": (_MAP, False), "temperature": (_NUMBER, False),
    "preprocess": (_MAP, True), "encoder_name": (_TEXT, True), "encoder_pretrained": (_TEXT, True),
    "encoder_fingerprint": (_TEXT, True), "metrics": (_MAP, False), "extra": (_MAP, False),
    "ood_threshold": (_NUMBER, True), "weights_sha256": (_TEXT, True), "format": (_TEXT, False),
}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _MAP:
        return isinstance(value, Mapping)
    if kind == _LIST:
        return isinstance(value, (list, tuple))
    if isinstance(value, bool):  # JSON's true is not a count
        return False
    return isinstance(value, numbers.Integral if kind == _WHOLE else numbers.Real)


@dataclass
class HeadMeta:
    """What a head is, which encoder it belongs to, and how to read its outputs."""

    name: str  # head name; becomes the Triton model name
    encoder_type: str  # "clip" or "dinov3"
    encoder_model: str  # open_clip architecture or hub id
    embedding_dim: int  # width of the embeddings the head was trained on
    classes: list[str]  # output order of logits and probabilities
    background_indices: list[int] = field(default_factory=list)  # classes that mean "no object of interest"
    head_type: str = "mlp"  # "mlp" or "logreg"
    head_config: dict[str, Any] = field(default_factory=dict)  # HeadConfig as a dict
    temperature: float = 1.0  # fitted on held-out data; probabilities are softmax(logits / T)
    preprocess: dict[str, Any] | None = None  # PreprocessSpec of the encoder, as training used it
    encoder_name: str | None = None  # registry key, e.g. "dinov3:vitb16"
    encoder_pretrained: str | None = None  # open_clip pretrained tag, or the local checkpoint file trained with
    encoder_fingerprint: str | None = None  # sha256 of encoder weights + preprocessing
    encoder_untrained: bool = False  # True for the tiny random twins
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics at training time
    extra: dict[str, Any] = field(default_factory=dict)  # recipe details (profile, ood, priors, ...)
    ood_threshold: float | None = None  # ood_score above this flags a crop as no known class; None: no OOD
    # sha256 of head.safetensors as saved beside this meta.json, checked on every load; None in artifacts
    # saved before it existed (they load with a warning that the pair cannot be verified)
    weights_sha256: str | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        for f in fields(self):
            kind, optional = FIELD_KINDS.get(f.name, (None, True))
            value = getattr(self, f.name)
            if kind is not None and not (value is None and optional) and not _is_kind(value, kind):
                raise ArtifactError(f"head {self.name!r}: field {f.name!r} is {value!r} "
                                    f"({type(value).__name__}), not {kind}; the metadata was edited or "
                                    "written by something other than headserve: retrain the head")
        if not all(isinstance(c, str) for c in self.classes):
            raise ArtifactError(f"head {self.name!r}: classes {self.classes!r} are not all class names "
                                "(text)")
        if not all(_is_kind(i, _WHOLE) for i in self.background_indices):
            raise ArtifactError(f"head {self.name!r}: background_indices {self.background_indices!r} are not all "
                                "class indices")
        if len(self.classes) < 2:
            raise ArtifactError(f"head {self.name!r} has {len(self.classes)} classes; a classifier needs at least 2")
        bad = [i for i in self.background_indices if not 0 <= i < len(self.classes)]
        if bad:
            raise ArtifactError(
                f"head {self.name!r}: background indices {bad} are outside 0..{len(self.classes) - 1}"
            )

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        if self.preprocess is None:
            raise ArtifactError(f"head {self.name!r} records no preprocessing spec; re-export it with headserve")
        return PreprocessSpec.from_dict(self.preprocess)

    @property
    def identity(self) -> EncoderIdentity:
        """The encoder the head was trained on, in the shape every other place compares encoders in.

        The JSON keeps its flat fields (``encoder_type``, ``encoder_model``, ...) so older artifacts read unchanged.
        """
        return EncoderIdentity(
            encoder_type=self.encoder_type,
            model=self.encoder_model,
            embedding_dim=self.embedding_dim,
            fingerprint=self.encoder_fingerprint or None,
            name=self.encoder_name or None,
            pretrained=self.encoder_pretrained or None,
            preprocess=PreprocessSpec.from_dict(self.preprocess) if self.preprocess is not None else None,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "meta") -> "HeadMeta":
        """Read current and older metadata; missing encoder_type means CLIP."""
        values = dict(data)
        if "encoder_model" not in values and "clip_model" in values:
            values["encoder_model"] = values.pop("clip_model")
        if "classes" not in values and "labelmap" in values:
            values["classes"] = list(values.pop("labelmap"))
        values.setdefault("encoder_type", DEFAULT_ENCODER_TYPE)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        for key in ("name", "encoder_model", "embedding_dim", "classes"):
            if key not in values:
                raise ArtifactError(f"{origin}: field {key!r} is missing; the artifact is incomplete or not a head")
        try:
            meta = cls(**{k: v for k, v in values.items() if k in known})
        except ArtifactError as exc:  # a field of the wrong kind: say which file holds it
            raise ArtifactError(f"{origin}: {exc}") from None
        if meta.preprocess is not None:  # read now, so a spec this headserve cannot apply fails where it is stored
            try:
                PreprocessSpec.from_dict(meta.preprocess)
            except PreprocessSpecError as exc:
                raise ArtifactError(f"{origin}: field 'preprocess': {exc}; export the head with the headserve "
                                    "that trained it, or retrain it with this one") from None
        if unknown:
            meta.extra.setdefault("unread_fields", unknown)
        return meta


def save_artifact(directory: str | os.PathLike, meta: HeadMeta, tensors: Mapping[str, np.ndarray]) -> Path:
    """Write meta.json + head.safetensors atomically into ``directory`` (replacing an older one).

    meta.json records the sha256 of the weights file written beside it (``weights_sha256``; ``meta``
    itself is not changed), so that weights copied in from another artifact are refused when it is loaded.
    """
    from safetensors.numpy import save_file

    tmp = staging_dir(directory)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
        digest = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
        (tmp / META_FILE).write_text(replace(meta, weights_sha256=digest).to_json() + "\n")
        return publish_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_meta(directory: str | os.PathLike) -> HeadMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; pass the directory that `headserve train` wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); meta.json is written "
                            "by `headserve train`: copy the artifact again or retrain it") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, Mapping):
        raise ArtifactError(f"{path}: not a JSON object of head fields; pass the directory that `headserve train` "
                            "wrote")
    return HeadMeta.from_dict(data, origin=str(path))


def load_tensors(directory: str | os.PathLike, meta: HeadMeta | None = None) -> dict[str, np.ndarray]:
    """The weights file's tensors; with ``meta`` (that artifact's meta.json), only if they are the ones it recorded.

    A weights file whose sha256 is not ``meta.weights_sha256`` is a ``WeightsMismatchError`` naming both
    files: serving it would publish one head's numbers under another head's classes and name. An artifact
    saved before the digest existed loads with an ``UnverifiedWeightsWarning``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; the artifact has metadata but no weights")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        tensors = load(data)
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({str(exc)[:120]}); it may be "
            "truncated or not a head's weights: copy the artifact again or retrain it with `headserve train`"
        ) from None
    if meta is not None:  # after parsing: a truncated file is said to be one, not to be another head's
        _check_digest(meta, path, hashlib.sha256(data).hexdigest())
    return tensors


def _check_digest(meta: HeadMeta, path: Path, digest: str) -> None:
    meta_path = path.with_name(META_FILE)
    if meta.weights_sha256 is None:
        warnings.warn(f"{meta_path} records no digest of {path.name} (the artifact was saved by an older "
                      "headserve), so whether these weights belong to this head cannot be checked; retrain or "
                      "re-save the head to record one", UnverifiedWeightsWarning, stacklevel=3)
        return
    if digest != meta.weights_sha256:
        raise WeightsMismatchError(
            f"{path} (sha256 {digest[:12]}...) is not the weights file that {meta_path} was saved with "
            f"(sha256 {meta.weights_sha256[:12]}...): the weights come from another artifact or were changed "
            "since; copy meta.json and head.safetensors of one artifact together, or retrain the head with "
            "`headserve train`")


def check_encoder_match(meta: HeadMeta, encoder_type: str | EncoderIdentity, encoder_model: str = "",
                        embedding_dim: int = 0, fingerprint: str | None = None, where: str = "encoder") -> None:
    """Refuse to pair a head with an encoder other than the one its embeddings came from.

    Takes the encoder as an ``EncoderIdentity``, or as its type, model, dim and fingerprint (the older form).
    """
    theirs = (encoder_type if isinstance(encoder_type, EncoderIdentity)
              else EncoderIdentity(encoder_type, encoder_model, embedding_dim, fingerprint or None))
    meta.identity.require_match(theirs, meta.name, where)


def trained_encoder(meta: HeadMeta, name: str | None = None, weights: str | None = None) -> tuple[EncoderSpec, str]:
    """The registry encoder a head was trained on, loaded from the weights it was trained with.

    ``weights`` (``--encoder-weights``) wins; else the local checkpoint file or directory that
    meta.json records; the model hub only when nothing local is recorded. Returns the spec and a
    phrase saying where its weights come from, for the command to print.
    """
    spec = get_encoder(name or meta.encoder_name or "")
    if weights:
        return spec.with_weights(weights), f"{weights} (--encoder-weights)"
    if spec.is_tiny:
        return spec, "random tiny twin"
    # The family says which field names its weights: an open_clip pretrained tag, or a hub id / local path.
    by_tag = spec.family.weights_field == "pretrained"
    hub = spec.pretrained if by_tag else spec.model_id
    recorded = meta.encoder_pretrained if by_tag else meta.encoder_model
    if not recorded or recorded == hub:
        return spec, f"{hub} from the model hub"
    if not Path(recorded).exists():
        raise EncoderLoadError(
            f"head {meta.name!r} was trained with encoder weights {recorded} (recorded in its meta.json), which "
            "do not exist on this machine; pass --encoder-weights PATH with the same weights (a different "
            "checkpoint is refused by the fingerprint check)")
    return spec.with_weights(recorded), f"{recorded} (recorded in meta.json)"
