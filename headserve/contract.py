"""The contract between export and the client: tensor names, model names, and what a served head is.

Export writes a Triton repository; the client reads it back over gRPC. Both sides need the same
tensor names (``pixels`` in, ``probs`` out), the same rules for naming models (``<head>_head``,
``encoder_<slug>``, ...) and the same reading of the string parameters an ensemble publishes. Each of
those lives here once, torch-free, so the client imports it without the training stack:

- ``EncoderIdentity``: which encoder a head's embeddings came from (family, model, width, fingerprint,
  registry name, weights, preprocessing), whether it is read from a head's meta.json, an encoder
  model's parameters or a head ensemble's.
- ``ServedHead``: the record of a served head, rendered into an ensemble's parameters by
  ``to_parameters`` and read back by ``from_parameters``. Export builds every head ensemble from one
  and never edits a written config; the client's ``HeadInfo`` and ``repo validate`` decode the same one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from headserve.encoders import DEFAULT_ENCODER_TYPE, EncoderSpec, PreprocessSpec
from headserve.errors import ConfigError, EncoderMismatchError, MalformedParameterError, MissingParameterError, ParameterError
from headserve.regions import RegionSpec, mode_label

# ---------------------------------------------------------------------------------------------
# Tensor names: every ONNX input and output headserve exports, and every name a client sends or reads.

PIXELS = "pixels"  # uint8 (B, S, S, 3): an encoder's and a head ensemble's input
EMBEDDING = "embedding"  # FP32 (B, D), L2-normalised: an encoder's output; the input of a head and of a prompt model
# The encoder emits its embedding twice: `embedding` is the ensemble's output, `head_input` feeds the
# heads. Triton's ensemble scheduler fails a request ("unexpected deadlock, at least one output is not
# set") when one tensor is both an ensemble output and a later step's input and the client does not
# ask for it, so the two roles get two tensors.
HEAD_FEED = "head_input"  # inside an ensemble, feeds the head model's `embedding` input
LOGITS = "logits"  # FP32 (B, C)
PROBS = "probs"  # FP32 (B, C): softmax(logits / temperature), labelled by the labels file
OOD_SCORE = "ood_score"  # FP32 (B, 1): above the published ood_threshold, a crop is no known class
# INT64 (B, 1): which head computed an answer, the `head_id` its ensemble publishes. Triton can answer
# through an ensemble whose published parameters belong to another head version than the one its step ran
# (a polling server reloads models one by one from a repository it reads file by file), so the client
# checks this on every answer rather than trusting that the classes it read describe the head that answered.
HEAD_ID = "head_id"
SCORE_OUTPUTS: tuple[str, ...] = (LOGITS, PROBS, OOD_SCORE)  # what a head computes from an embedding, in order
HEAD_OUTPUTS: tuple[str, ...] = (*SCORE_OUTPUTS, HEAD_ID)  # a head model's outputs, in this order
HEAD_OUTPUT_WIDTHS: Mapping[str, int] = {OOD_SCORE: 1, HEAD_ID: 1}  # widths that are not the class count
HEAD_OUTPUT_TYPES: Mapping[str, str] = {HEAD_ID: "INT64"}  # Triton data types that are not FP32
HEAD_ID_BITS = 52  # ids fit a float64 exactly, so parity checks and JSON carry them unchanged
PROMPT_OUTPUT = "similarity"  # FP32 (B, P): the prompt model's output, from its `embedding` input
# The region encoder (headserve.regions): one letterboxed image and its boxes in, one row per box out. Its
# outputs reuse the names above with K rows: EMBEDDING and HEAD_FEED (K, D); a region head's LOGITS, PROBS,
# OOD_SCORE and HEAD_ID (K, ...) as a crop head's are (B, ...).
REGION_PIXELS = "region_pixels"  # uint8 (1, R, R, 3): one image letterboxed to the RegionSpec's resolution
BOXES = "boxes"  # FP32 (K, 4): x1, y1, x2, y2 in pixels of that R x R frame (Letterbox.to_frame)
IMAGE = "image"  # BYTES [1]: encoded JPEG/PNG, the input of a decoder and of an `_encoded` ensemble
LABELS_FILE = "labels.txt"  # one class name per line, in output order, beside a model's config.pbtxt
MULTI_HEAD_SEPARATOR = "__"  # "<head>__<output>" in a multi-head ensemble; model names never contain it


# ---------------------------------------------------------------------------------------------
# Model names: what export calls each model, and so what a client asks for.


def encoder_model_name(encoder_name: str) -> str:
    """``clip:ViT-B-32`` -> ``encoder_clip_ViT-B-32``: registry names hold characters model names may not."""
    return "encoder_" + re.sub(r"[^A-Za-z0-9_-]+", "_", encoder_name).strip("_")


def head_model_name(head: str) -> str:
    """The head's own graph (embedding -> logits, probs, ood_score); clients call the ensemble ``head``."""
    return f"{head}_head"


def prompt_model_name(head: str) -> str:
    """A CLIP head's prompt similarity model."""
    return f"{head}_prompts"


def encoded_model_name(head: str) -> str:
    """The head's ensemble that takes encoded image bytes instead of pixels."""
    return f"{head}_encoded"


def decoder_model_name(encoder_model: str) -> str:
    """The image decoder in front of an encoder model (``encoder_x`` -> ``decode_x``), shared by its heads."""
    return "decode_" + encoder_model.removeprefix("encoder_")


def multi_head_model_name(encoder_model: str) -> str:
    """The ensemble running an encoder model once for several heads (``encoder_x`` -> ``heads_x``)."""
    return "heads_" + encoder_model.removeprefix("encoder_")


def region_encoder_model_name(encoder_name: str, resolution: int) -> str:
    """``dinov3:vits16`` at 448 px -> ``encoder_dinov3_vits16_region448``: beside the crop encoder of the same
    weights, so crop and region heads of one encoder share a repository."""
    return f"{encoder_model_name(encoder_name)}_region{resolution}"


# A region ensemble publishes its cap on boxes per image (its head model's max_batch_size) under this key.
MAX_BOXES_KEY = "max_boxes"


def max_boxes_of(params: Mapping[str, str], where: str) -> int:
    """The cap a region ensemble publishes; a missing or malformed one is a ``MalformedParameterError``."""
    value = params.get(MAX_BOXES_KEY, "")
    if not value.isdigit() or int(value) < 1:
        raise MalformedParameterError(f"{where} publishes {MAX_BOXES_KEY!r} {value!r}, not a positive whole number "
                                      "of boxes; re-export the head with `headserve export head`", MAX_BOXES_KEY)
    return int(value)


def multi_head_output_name(head: str, output: str) -> str:
    """A head's output inside a multi-head ensemble."""
    return f"{head}{MULTI_HEAD_SEPARATOR}{output}"


_FIX = "re-export it with `headserve export`, or upgrade headserve if the model was exported by a newer one"
T = TypeVar("T")


def _read(params: Mapping[str, str], key: str, parse: Callable[[str], T], where: str) -> T:
    """``parse(params[key])``, with a failure named by key, value and origin."""
    value = params[key]
    try:
        return parse(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedParameterError(f"{where} publishes a malformed {key!r} parameter {value[:120]!r} ({exc}); "
                                      f"{_FIX}", key) from None


def _json_list(kind: Callable[[Any], T]) -> Callable[[str], tuple[T, ...]]:
    def parse(text: str) -> tuple[T, ...]:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("not a JSON list")
        return tuple(kind(v) for v in data)

    return parse


def _class_name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"class name {value!r} is not a string")
    return value


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"index {value!r} is not an integer")
    return value


def _width(text: str) -> int:
    number = int(text)
    if number < 0:
        raise ValueError("a width is not negative")
    return number


def _head_id(text: str) -> int:
    number = int(text)
    if not 0 <= number < 2 ** HEAD_ID_BITS:
        raise ValueError(f"a head id is a whole number from 0 to 2**{HEAD_ID_BITS} - 1")
    return number


def head_id_of(digest: bytes) -> int:
    """A head id from a digest (sha256 of what the head computes with): its first ``HEAD_ID_BITS`` bits."""
    return int.from_bytes(digest[:8], "big") >> (64 - HEAD_ID_BITS)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


# ---------------------------------------------------------------------------------------------
# Encoder identity

# The parameter (and meta.json field) holding a region encoder's RegionSpec as JSON; absent means crop mode.
REGION_KEY = "encoder_region"
CROP_MODE = "crop"  # the value matching_values gives REGION_KEY for a crop encoder: never "unrecorded"
# Fields two identities must agree on for one's embeddings to suit the other's head, as parameter keys.
MATCH_KEYS: tuple[str, ...] = ("encoder_type", "encoder_model", "embedding_dim", "encoder_fingerprint", REGION_KEY)
# Every parameter an identity publishes (on encoder models, head ensembles and multi-head ensembles).
IDENTITY_KEYS: tuple[str, ...] = ("encoder_type", "encoder_model", "encoder_name", "embedding_dim",
                                  "encoder_fingerprint", "preprocess", REGION_KEY)


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder produced a head's embeddings: the one shape of it that meta.json, encoder models,
    head ensembles and fingerprint files all read into."""

    encoder_type: str  # family, e.g. "clip", "dinov3", "dinov2"
    model: str  # open_clip architecture, or hub id / local directory; "" when not published
    embedding_dim: int  # width of the L2-normalised embedding; 0 when not published
    fingerprint: str | None = None  # sha256 of weights + preprocessing; None when not recorded
    name: str | None = None  # registry key, e.g. "dinov3:vitb16"; None when not recorded
    pretrained: str | None = None  # open_clip pretrained tag or local checkpoint file; None for hub models
    preprocess: PreprocessSpec | None = None  # how crops become its input; None when not recorded
    # crop mode (None): one encoder pass per box. A RegionSpec: one pass per image, boxes pooled from its
    # patch grid. The two give different embeddings of the same box, so a head of one mode is never paired
    # with an encoder of the other; an identity written before modes existed reads as crop.
    region: RegionSpec | None = None

    def __post_init__(self) -> None:
        if self.embedding_dim < 0:
            raise ConfigError(f"embedding_dim {self.embedding_dim} of encoder {self.label} is negative").about(
                "embedding_dim", self.embedding_dim)

    @classmethod
    def from_spec(cls, spec: EncoderSpec, fingerprint: str | None = None,
                  region: RegionSpec | None = None) -> "EncoderIdentity":
        """The identity of a registry encoder, as loaded (with ``fingerprint`` once its weights are hashed), in
        crop mode or, with ``region``, in region mode."""
        return cls(encoder_type=spec.encoder_type, model=spec.model_id, embedding_dim=spec.embedding_dim,
                   fingerprint=fingerprint, name=spec.name, pretrained=spec.pretrained, preprocess=spec.preprocess,
                   region=region)

    @property
    def label(self) -> str:
        """``type:model``, as messages name an encoder."""
        return f"{self.encoder_type}:{self.model}"

    @property
    def mode(self) -> str:
        """``crop`` or ``region (masked-mean, 448 px, patch 16)``: how messages name the encoder's mode."""
        return mode_label(self.region)

    def matching_values(self) -> dict[str, str | None]:
        """The values another encoder must share, by parameter key (None: not recorded, so not compared).

        The mode is always recorded: an identity without a region spec is a crop encoder's.
        """
        return {"encoder_type": self.encoder_type, "encoder_model": self.model,
                "embedding_dim": str(self.embedding_dim), "encoder_fingerprint": self.fingerprint,
                REGION_KEY: self.region.to_json() if self.region is not None else CROP_MODE}

    def differences(self, other: "EncoderIdentity", skip_unknown: bool = True) -> list[tuple[str, str, str]]:
        """(key, ours, theirs) for each identifying field on which the two disagree.

        A fingerprint is compared only when both record one. ``skip_unknown`` also skips any field one
        side left empty (a repository written by hand, or by an older headserve).
        """
        ours, theirs = self.matching_values(), other.matching_values()
        diffs = []
        for key in MATCH_KEYS:
            a, b = ours[key], theirs[key]
            unknown = not a or not b or (key == "embedding_dim" and "0" in (a, b))
            if (unknown and (skip_unknown or key == "encoder_fingerprint")) or a == b:
                continue
            diffs.append((key, str(a), str(b)))
        return diffs

    def require_match(self, other: "EncoderIdentity", head: str, where: str = "encoder") -> None:
        """Refuse to pair a head trained on ``self`` with the encoder ``other``: type, model, dim, fingerprint."""
        diffs = self.differences(other, skip_unknown=False)
        if not diffs:
            return
        if any(key == REGION_KEY for key, _, _ in diffs):
            raise EncoderMismatchError(
                f"head {head!r} was trained on {self.label} in {self.mode} mode, but the {where} is {other.label} in "
                f"{other.mode} mode: pooled region features and crop embeddings of the same box differ, so the "
                f"head's answers would be wrong. Serve it on a {self.mode.split(' ')[0]} encoder (export the encoder "
                f"in the mode the head was trained in), or retrain it with `pooling` "
                f"{'region' if other.region is not None else 'crop'}."
            )
        raise EncoderMismatchError(
            f"head {head!r} was trained on {self.label} "
            f"(embedding_dim {self.embedding_dim}, fingerprint {self.fingerprint or 'unrecorded'}), "
            f"but the {where} is {other.label} (embedding_dim {other.embedding_dim}, "
            f"fingerprint {other.fingerprint or 'unrecorded'}). Retrain the head on this encoder's embeddings "
            "or serve it with the encoder it was trained on."
        )

    def to_parameters(self) -> dict[str, str]:
        """The identity as config parameters; fingerprint and preprocessing only when recorded."""
        params = {
            "encoder_type": self.encoder_type,
            "encoder_model": self.model,
            "encoder_name": self.name or "",
            "embedding_dim": str(self.embedding_dim),
        }
        if self.preprocess is not None:
            params["preprocess"] = self.preprocess.to_json()
        if self.fingerprint:
            params["encoder_fingerprint"] = self.fingerprint
        if self.region is not None:  # crop encoders publish none: repositories written before modes read unchanged
            params[REGION_KEY] = self.region.to_json()
        return params

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], where: str = "model",
                        read_preprocess: bool = True) -> "EncoderIdentity":
        """Read the identity a config publishes; absent fields read as unrecorded, malformed ones raise
        ``MalformedParameterError`` naming the key. A config without encoder_type is a CLIP head's.

        ``read_preprocess=False`` leaves the preprocessing unread, for checks that compare only ``MATCH_KEYS``.
        """
        dim = _read(params, "embedding_dim", _width, where) if params.get("embedding_dim") else 0
        preprocess = (_read(params, "preprocess", PreprocessSpec.from_json, where)
                      if read_preprocess and params.get("preprocess") else None)
        region = _read(params, REGION_KEY, RegionSpec.from_json, where) if params.get(REGION_KEY) else None
        return cls(
            encoder_type=params.get("encoder_type") or DEFAULT_ENCODER_TYPE,
            model=params.get("encoder_model", ""),
            embedding_dim=dim,
            fingerprint=params.get("encoder_fingerprint") or None,
            name=params.get("encoder_name") or None,
            preprocess=preprocess,
            region=region,
        )


# ---------------------------------------------------------------------------------------------
# Served head

# Parameter keys the ServedHead record reads beyond its encoder identity; any other key is kept verbatim.
HEAD_KEYS: tuple[str, ...] = ("classes", "background_indices", "temperature", "head_type", "classifier",
                              "ood_threshold", "ood_quantile", "prompt_model", "prompt_classes", "encoded_model",
                              "input", "head_id")
ENCODED_INPUT = "encoded"  # the "input" parameter of an `_encoded` ensemble


@dataclass(frozen=True)
class ServedHead:
    """What a served head is: everything a caller needs to preprocess crops and read the answers.

    Rendered into the string parameters of the head's ensemble by ``to_parameters`` and read back by
    ``from_parameters``; ``from_parameters(name, head.to_parameters()) == head``.
    """

    name: str  # ensemble name: the one name a caller passes
    classes: tuple[str, ...]  # class names in probability order
    encoder: EncoderIdentity  # the encoder the head was trained on; its preprocess is how crops are resized
    background_indices: tuple[int, ...] = ()  # classes that mean "nothing of interest"
    temperature: float = 1.0  # calibration temperature baked into `probs`
    head_type: str = ""  # "mlp" or "logreg"; "" when not published
    classifier: str = ""  # last layer: "linear" or "arcface"; "" when not published
    ood_threshold: float | None = None  # ood_score above this is out of distribution; None: no OOD detector
    # the quantile of known validation crops the threshold was set at: by design about 1 - this share is flagged
    ood_quantile: float | None = None
    prompt_model: str | None = None  # CLIP heads: the model mapping embedding -> prompt similarity
    prompt_classes: tuple[int, ...] = ()  # class index of each prompt the prompt model scores
    encoded_model: str | None = None  # the head's `_encoded` ensemble, once exported
    encoded_input: bool = False  # True on the `_encoded` ensemble itself: it takes image bytes, not pixels
    # the value of the head graph's `head_id` output (a digest of its weights and of this record's decoding
    # fields); None for heads exported before it existed, whose answers cannot be checked this way
    head_id: int | None = None
    # parameters this headserve does not read (a newer exporter's), kept verbatim when the ensemble is rendered again
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(f"head {self.name!r} has {len(self.classes)} classes; a classifier needs at least "
                              "2").about("classes", len(self.classes))
        n = len(self.classes)
        bad = [i for i in (*self.background_indices, *self.prompt_classes) if not 0 <= i < n]
        if bad:
            raise ConfigError(f"head {self.name!r}: class indices {bad} are outside 0..{n - 1}").about(
                "background_indices" if set(bad) & set(self.background_indices) else "prompt_classes", bad)
        clash = sorted(set(self.extra) & {*HEAD_KEYS, *IDENTITY_KEYS})
        if clash:
            raise ConfigError(f"head {self.name!r}: extra parameters {clash} are record fields; set the fields "
                              "instead").about("extra", clash)

    @property
    def preprocess(self) -> PreprocessSpec:
        """How crops become the encoder's input (``from_parameters`` guarantees one)."""
        if self.encoder.preprocess is None:
            raise MissingParameterError(f"head {self.name!r} records no preprocessing spec; {_FIX}", "preprocess")
        return self.encoder.preprocess

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    @property
    def encoder_type(self) -> str:
        return self.encoder.encoder_type

    def to_parameters(self) -> dict[str, str]:
        """The ensemble config's string parameters; optional fields appear only when set."""
        params = {
            "classes": json.dumps(list(self.classes)),
            "background_indices": json.dumps(list(self.background_indices)),
            **self.encoder.to_parameters(),
            "temperature": repr(float(self.temperature)),
            "head_type": self.head_type,
            "classifier": self.classifier,
        }
        if self.ood_threshold is not None:
            params["ood_threshold"] = repr(float(self.ood_threshold))
        if self.ood_quantile is not None:
            params["ood_quantile"] = repr(float(self.ood_quantile))
        if self.prompt_model:
            params["prompt_model"] = self.prompt_model
            params["prompt_classes"] = json.dumps(list(self.prompt_classes))
        if self.encoded_model:
            params["encoded_model"] = self.encoded_model
        if self.encoded_input:
            params["input"] = ENCODED_INPUT
        if self.head_id is not None:
            params["head_id"] = str(self.head_id)
        params.update(self.extra)
        return params

    @classmethod
    def from_parameters(cls, name: str, params: Mapping[str, str], where: str | None = None) -> "ServedHead":
        """Read the record a head ensemble publishes.

        ``classes`` and ``preprocess`` are required (``MissingParameterError``); the rest default as an
        older headserve left them out. A value that does not parse raises ``MalformedParameterError``
        naming the key and the value. ``where`` names the origin in messages (default: the head).
        """
        where = where or f"head {name!r}"
        for key in ("classes", "preprocess"):
            if not params.get(key):
                raise MissingParameterError(f"{where} publishes no {key!r} parameter; {_FIX}", key)
        ood = params.get("ood_threshold")
        input_kind = params.get("input", "")
        if input_kind not in ("", ENCODED_INPUT):
            raise MalformedParameterError(f"{where} publishes 'input' {input_kind!r}, which is not "
                                          f"{ENCODED_INPUT!r}; {_FIX}", "input")
        classes = _read(params, "classes", _json_list(_class_name), where)
        if len(classes) < 2:
            raise MalformedParameterError(f"{where} publishes 'classes' {params['classes']!r}: a classifier needs "
                                          f"at least 2 classes; {_FIX}", "classes")
        indices = {key: _read(params, key, _json_list(_index), where) if params.get(key) else ()
                   for key in ("background_indices", "prompt_classes")}
        for key, values in indices.items():
            bad = [i for i in values if not 0 <= i < len(classes)]
            if bad:
                raise MalformedParameterError(f"{where} publishes {key!r} {params[key]!r}: indices {bad} are outside "
                                              f"0..{len(classes) - 1} of its {len(classes)} classes; {_FIX}", key)
        return cls(
            name=name,
            classes=classes,
            encoder=EncoderIdentity.from_parameters(params, where),
            background_indices=indices["background_indices"],
            temperature=_read(params, "temperature", _finite, where) if params.get("temperature") else 1.0,
            head_type=params.get("head_type", ""),
            classifier=params.get("classifier", ""),
            ood_threshold=_read(params, "ood_threshold", _finite, where) if ood else None,
            ood_quantile=_read(params, "ood_quantile", _finite, where) if params.get("ood_quantile") else None,
            prompt_model=params.get("prompt_model") or None,
            prompt_classes=indices["prompt_classes"],
            encoded_model=params.get("encoded_model") or None,
            encoded_input=input_kind == ENCODED_INPUT,
            head_id=_read(params, "head_id", _head_id, where) if params.get("head_id") else None,
            extra={k: v for k, v in params.items() if k not in HEAD_KEYS and k not in IDENTITY_KEYS},
        )


__all__ = [
    "EMBEDDING", "HEAD_FEED", "HEAD_OUTPUTS", "HEAD_OUTPUT_WIDTHS", "HEAD_OUTPUT_TYPES", "HEAD_ID",
    "HEAD_ID_BITS", "SCORE_OUTPUTS", "head_id_of", "IMAGE", "LABELS_FILE", "LOGITS",
    "REGION_PIXELS", "BOXES", "REGION_KEY", "CROP_MODE",
    "MULTI_HEAD_SEPARATOR", "OOD_SCORE", "PIXELS", "PROBS", "PROMPT_OUTPUT",
    "encoder_model_name", "head_model_name", "prompt_model_name", "encoded_model_name", "decoder_model_name",
    "multi_head_model_name", "multi_head_output_name",
    "ParameterError", "MissingParameterError", "MalformedParameterError",
    "EncoderIdentity", "ServedHead", "IDENTITY_KEYS", "MATCH_KEYS", "HEAD_KEYS", "ENCODED_INPUT",
]
