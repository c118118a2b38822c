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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from headserve.contract import REGION_KEY, EncoderIdentity
from headserve.encoders import DEFAULT_ENCODER_TYPE, EncoderSpec, PreprocessSpec, get_encoder
from headserve.errors import (
    ArtifactError,
    ConfigError,
    EncoderLoadError,
    PreprocessSpecError,
    UnverifiedWeightsWarning,
    WeightsMismatchError,
)
from headserve.fsutil import publish_dir, staging_dir
from headserve.regions import RegionSpec

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
    "ood_threshold": (_NUMBER, True), "ood_quantile": (_NUMBER, True), "weights_sha256": (_TEXT, True), "format": (_TEXT, False),
    REGION_KEY: (_MAP, True),
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


# meta.json's flat encoder fields (as every headserve wrote them) -> the EncoderIdentity field each holds.
ENCODER_FIELDS: Mapping[str, str] = {"encoder_type": "encoder_type", "encoder_model": "model",
                                     "embedding_dim": "embedding_dim", "encoder_fingerprint": "fingerprint",
                                     "encoder_name": "name", "encoder_pretrained": "pretrained",
                                     "preprocess": "preprocess", REGION_KEY: "region"}


@dataclass
class HeadMeta:
    """What a head is, which encoder it belongs to, and how to read its outputs.

    ``encoder`` is the one record of the encoder that encoder models, ensembles and fingerprint files also
    read into; meta.json keeps it as the flat fields of ``ENCODER_FIELDS`` so older artifacts read unchanged.
    """

    name: str  # head name; becomes the Triton model name
    encoder: EncoderIdentity  # the encoder the head's embeddings came from, with its preprocessing as training used it
    classes: list[str]  # output order of logits and probabilities
    background_indices: list[int] = field(default_factory=list)  # classes that mean "no object of interest"
    head_type: str = "mlp"  # "mlp" or "logreg"
    head_config: dict[str, Any] = field(default_factory=dict)  # HeadConfig as a dict
    temperature: float = 1.0  # fitted on held-out data; probabilities are softmax(logits / T)
    encoder_untrained: bool = False  # True for the tiny random twins
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics at training time
    extra: dict[str, Any] = field(default_factory=dict)  # recipe details (profile, ood, priors, ...)
    # The OOD figures, each stored here only (older meta.json files repeated them in extra.ood and
    # extra.drift_reference; from_dict moves them here):
    ood_threshold: float | None = None  # ood_score above this flags a crop as no known class; None: no OOD
    ood_quantile: float | None = None  # the quantile of foreground validation scores the threshold was set at
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
    def embedding_dim(self) -> int:
        """The head's input width: its encoder's embedding width."""
        return self.encoder.embedding_dim

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        if self.encoder.preprocess is None:
            raise ArtifactError(f"head {self.name!r} records no preprocessing spec; re-export it with headserve")
        return self.encoder.preprocess

    def to_dict(self) -> dict[str, Any]:
        """meta.json's fields: the encoder flat, beside the head's own."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "encoder"}
        data.update({key: getattr(self.encoder, attr) for key, attr in ENCODER_FIELDS.items()})
        data["preprocess"] = self.encoder.preprocess.to_dict() if self.encoder.preprocess is not None else None
        # region mode only: a crop head's meta.json keeps the bytes it always had, and reads back as crop
        if self.encoder.region is not None:
            data[REGION_KEY] = self.encoder.region.to_dict()
        else:
            del data[REGION_KEY]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "meta") -> "HeadMeta":
        """Read current and older metadata; missing encoder_type means CLIP."""
        values = dict(data)
        if "encoder_model" not in values and "clip_model" in values:
            values["encoder_model"] = values.pop("clip_model")
        if "classes" not in values and "labelmap" in values:
            values["classes"] = list(values.pop("labelmap"))
        values.setdefault("encoder_type", DEFAULT_ENCODER_TYPE)
        known = {f.name for f in fields(cls)} - {"encoder"}
        unknown = sorted(set(values) - known - set(ENCODER_FIELDS))
        for key in ("name", "encoder_model", "embedding_dim", "classes"):
            if key not in values:
                raise ArtifactError(f"{origin}: field {key!r} is missing; the artifact is incomplete or not a head")
        for key, (kind, optional) in FIELD_KINDS.items():  # flat encoder fields too, before they are read
            value = values.get(key)
            if key in values and not (value is None and optional) and not _is_kind(value, kind):
                raise ArtifactError(f"{origin}: field {key!r} is {value!r}, not {kind}; "
                                    "the metadata was edited or written by something other than headserve: "
                                    "retrain the head")
        encoder = _encoder_from_fields(values, origin)
        _move_ood_figures(values)
        try:
            meta = cls(encoder=encoder, **{k: v for k, v in values.items() if k in known})
        except ArtifactError as exc:  # a field of the wrong kind: say which file holds it
            raise ArtifactError(f"{origin}: {exc}") from None
        if unknown:
            meta.extra.setdefault("unread_fields", unknown)
        return meta


def _move_ood_figures(values: dict[str, Any]) -> None:
    """Older meta.json files kept the OOD quantile in ``extra.ood`` and both figures again in
    ``extra.drift_reference``: read them into the top-level fields, and leave no second copy in ``extra``."""
    extra = dict(values.get("extra") or {})
    ood = extra.get("ood")
    if isinstance(ood, Mapping) and "quantile" in ood:
        extra["ood"] = {k: v for k, v in ood.items() if k != "quantile"}
        if values.get("ood_quantile") is None:
            values["ood_quantile"] = ood["quantile"]
    reference = extra.get("drift_reference")
    if isinstance(reference, Mapping):
        extra["drift_reference"] = {k: v for k, v in reference.items() if k not in ("ood_threshold", "ood_quantile")}
        for key in ("ood_threshold", "ood_quantile"):
            if values.get(key) is None and reference.get(key) is not None:
                values[key] = reference[key]
    if "extra" in values:
        values["extra"] = extra


def _encoder_from_fields(values: Mapping[str, Any], origin: str) -> EncoderIdentity:
    """The identity meta.json's flat encoder fields describe; a preprocessing spec this headserve cannot apply
    fails here, where it is stored, naming the file."""
    preprocess = None
    if values.get("preprocess") is not None:
        try:
            preprocess = PreprocessSpec.from_dict(values["preprocess"])
        except PreprocessSpecError as exc:
            raise ArtifactError(f"{origin}: field 'preprocess': {exc}; export the head with the headserve "
                                "that trained it, or retrain it with this one") from None
    region = None
    if values.get(REGION_KEY) is not None:  # absent (every meta.json written before region mode): a crop head
        try:
            region = RegionSpec.from_dict(values[REGION_KEY], f"{origin}: field {REGION_KEY!r}")
        except ConfigError as exc:
            raise ArtifactError(f"{exc}; export the head with the headserve that trained it, or retrain it with "
                                "this one") from None
    dim = values["embedding_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ArtifactError(f"{origin}: field 'embedding_dim' is {dim!r}, not a whole number of 0 or more; the "
                            "artifact is damaged: copy it again or retrain it with `headserve train`")
    return EncoderIdentity(
        encoder_type=values["encoder_type"], model=values["encoder_model"], embedding_dim=dim,
        fingerprint=values.get("encoder_fingerprint") or None, name=values.get("encoder_name") or None,
        pretrained=values.get("encoder_pretrained") or None, preprocess=preprocess, region=region)


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


def trained_encoder(meta: HeadMeta, name: str | None = None, weights: str | None = None) -> tuple[EncoderSpec, str]:
    """The registry encoder a head was trained on, loaded from the weights it was trained with.

    ``weights`` (``--encoder-weights``) wins; else the local checkpoint file or directory that
    meta.json records; the model hub only when nothing local is recorded. Returns the spec and a
    phrase saying where its weights come from, for the command to print.
    """
    spec = get_encoder(name or meta.encoder.name or "")
    if weights:
        return spec.with_weights(weights), f"{weights} (--encoder-weights)"
    if spec.is_tiny:
        return spec, "random tiny twin"
    # The family says which field names its weights: an open_clip pretrained tag, or a hub id / local path.
    by_tag = spec.family.weights_field == "pretrained"
    hub = spec.pretrained if by_tag else spec.model_id
    recorded = meta.encoder.pretrained if by_tag else meta.encoder.model
    if not recorded or recorded == hub:
        return spec, f"{hub} from the model hub"
    if not Path(recorded).exists():
        raise EncoderLoadError(
            f"head {meta.name!r} was trained with encoder weights {recorded} (recorded in its meta.json), which "
            "do not exist on this machine; pass `encoder_weights` PATH with the same weights (a different "
            "checkpoint is refused by the fingerprint check)")
    return spec.with_weights(recorded), f"{recorded} (recorded in meta.json)"
