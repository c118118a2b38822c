"""What a head is, read from the server: the ensemble's config parameters and outputs.

Export publishes everything a caller needs as string parameters of the ensemble's ``config.pbtxt``
(classes, background classes, encoder family and input spec, temperature, and optionally the OOD
threshold and the CLIP prompt model), so the caller passes only a head name. Outputs are read from the
config too: a head has an ``ood_score`` output only if its repository gave it one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from headserve.client.errors import ServerSideError
from headserve.contract import EMBEDDING, HEAD_ID, LOGITS, OOD_SCORE, PROBS, ParameterError, ServedHead
from headserve.encoders import FAMILIES, PreprocessSpec, has_text_tower

__all__ = ["PREFILTER_FAMILIES", "HeadInfo", "StaleAnswer", "latest_version", "check_answer", "check_rows",
           "head_info_from_config"]
# Encoder families whose heads may carry a prompt prefilter (those with a text tower), from the family registry.
PREFILTER_FAMILIES: Mapping[str, bool] = {name: family.text_tower for name, family in FAMILIES.items()}


@dataclass(frozen=True)
class HeadInfo:
    """What the server publishes about a head: the ``ServedHead`` record its ensemble carries, plus what only
    the served ensemble knows (batching, declared outputs, the version it was read from).

    The record's fields that callers read most are properties here; the rest are ``info.served.<field>``.
    """

    served: ServedHead  # the record decoded from the ensemble's parameters
    max_batch_size: int  # largest batch the ensemble accepts
    outputs: tuple[str, ...]  # output tensor names the ensemble declares
    version: str = ""  # the ensemble version these facts were read from; requests are pinned to it ("": any)

    @property
    def name(self) -> str:
        """The ensemble name: the one name a caller passes."""
        return self.served.name

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in probability order."""
        return self.served.classes

    @property
    def background_indices(self) -> tuple[int, ...]:
        """Classes that mean "nothing of interest"."""
        return self.served.background_indices

    @property
    def encoder_type(self) -> str:
        return self.served.encoder_type

    @property
    def preprocess(self) -> PreprocessSpec:
        """Resize rule, size and interpolation the encoder was trained with."""
        return self.served.preprocess

    @property
    def embedding_dim(self) -> int:
        return self.served.embedding_dim

    @property
    def ood_threshold(self) -> float | None:
        """``ood_score`` above this is out of distribution; None: not published."""
        return self.served.ood_threshold

    @property
    def ood_quantile(self) -> float | None:
        """The validation quantile the threshold was set at; None: not published."""
        return self.served.ood_quantile

    @property
    def prompt_model(self) -> str | None:
        """CLIP only: the model mapping embedding -> prompt similarity."""
        return self.served.prompt_model

    @property
    def prompt_classes(self) -> tuple[int, ...]:
        """Class index of each prompt the prompt model scores."""
        return self.served.prompt_classes

    @property
    def head_id(self) -> int | None:
        """Id of the head these facts describe, on every answer it computes; None: the ensemble has no such output."""
        return self.served.head_id if HEAD_ID in self.outputs else None

    @property
    def has_ood_score(self) -> bool:
        return OOD_SCORE in self.outputs

    @property
    def prefilter_supported(self) -> bool:
        return has_text_tower(self.encoder_type)

    def class_index(self, name: str, origin: str = "target class") -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            from headserve.client.errors import BadInputError

            raise BadInputError(f"{origin} {name!r} is not a class of head {self.name!r}; "
                                f"its classes are {', '.join(self.classes)}") from None


class StaleAnswer(Exception):
    """An answer that does not belong to the ``HeadInfo`` it would be decoded with (internal to the clients).

    The clients catch it, re-read the head once and resend; a second one becomes ``HeadChangedError``.
    """


def latest_version(versions: Sequence[str]) -> str:
    """The newest of the versions a server reports ready for a model ("" when it reports none)."""
    numeric = [v for v in versions if str(v).isdigit()]
    return max(numeric, key=int) if numeric else ""


def check_rows(model: str, version: str, rows: int, asked: Sequence[str], outputs: Mapping[str, Any]) -> None:
    """Refuse an answer that is not one row per row sent, of some width, for every output asked for.

    Triton calls a model READY once it loaded, not once it answers: a python stub running with a numpy its
    backend does not support answers every request with empty tensors. Such an answer is the server's
    failure, so it is a ``ServerSideError`` naming the model, its version and what came back, never a
    ``BadInputError`` that sends the caller to check crops that were fine. Checked before ``check_answer``,
    which takes a width that differs (and is not 0) for another version of the head.
    """
    wrong = []
    for name in asked:
        array = outputs.get(name)
        if array is None:
            wrong.append(f"no {name!r}")
            continue
        shape = tuple(getattr(array, "shape", ()))
        if len(shape) != 2 or shape[0] != rows or shape[1] == 0:
            wrong.append(f"{name!r} of shape {shape}")
    if wrong:
        raise ServerSideError(
            f"{model!r} version {version or '?'} answered {', '.join(wrong)} to a request of {rows} row(s) "
            f"(expected {rows} row(s) of each output): the model is loaded but does not answer, a server-side "
            "failure (its python stubs' packages, or its graph), not the inputs sent. See the server log "
            "(`headserve serve` prints where it is) and restart the server")


def check_answer(info: HeadInfo, model_version: str, outputs: Mapping[str, Any]) -> None:
    """Refuse outputs that another version of the head produced, or whose widths do not fit ``info``.

    Probabilities are decoded by position into ``info.classes``; an answer from a head with another class
    order or count would be labelled with the wrong names, silently. Raises ``StaleAnswer`` saying why, and
    ``ServerSideError`` for NaN/Inf probabilities or logits, which no threshold should ever see.
    """
    if info.version and model_version and model_version != info.version:
        raise StaleAnswer(f"answered by version {model_version} of {info.name!r}, read as version {info.version}")
    widths = {PROBS: len(info.classes), LOGITS: len(info.classes), OOD_SCORE: 1, HEAD_ID: 1,
              EMBEDDING: info.embedding_dim or None}
    for name, array in outputs.items():
        want = widths.get(name)
        shape: tuple[int, ...] = tuple(getattr(array, "shape", ()))
        if want is not None and (len(shape) != 2 or shape[1] != want):
            raise StaleAnswer(f"output {name!r} of {info.name!r} has shape {tuple(shape)}, but version "
                              f"{info.version or '?'} publishes width {want}")
    if info.head_id is not None and HEAD_ID in outputs:
        ids = {int(i) for i in np.asarray(outputs[HEAD_ID]).ravel()}
        if ids != {info.head_id}:
            raise StaleAnswer(f"answered by head id {', '.join(map(str, sorted(ids)))}, but version "
                              f"{info.version or '?'} of {info.name!r} publishes head id {info.head_id}")
    for name in (PROBS, LOGITS):  # a graph that overflowed (an fp16/TensorRT encoder) answers NaN, silently
        if name in outputs:
            bad = ~np.isfinite(np.asarray(outputs[name])).all(axis=1)
            if bad.any():
                raise ServerSideError(
                    f"{info.name!r} version {info.version or '?'} answered non-finite {name} for {int(bad.sum())} of "
                    f"{len(bad)} crops (first row {int(np.argmax(bad))}); nothing was decoded. The served graph "
                    "overflowed or was fed non-finite values: export the encoder at fp32 (not at fp16 precision, "
                    "nor with TensorRT at FP16) or check the inputs")


def head_info_from_config(name: str, config: Any, version: str = "") -> HeadInfo:
    """Build ``HeadInfo`` from a ``ModelConfig`` protobuf by decoding the ensemble's ``ServedHead`` record;
    a missing or malformed parameter is a ``ServerSideError`` naming the key."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    try:
        served = ServedHead.from_parameters(name, params, where=f"head {name!r}")
    except ParameterError as exc:
        raise ServerSideError(str(exc)) from exc  # the message names the key, its value and the fix
    return HeadInfo(served, int(config.max_batch_size) or 1, tuple(o.name for o in config.output), str(version))
