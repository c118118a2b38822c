"""Recipe gating: which candidate crops of a mining run are kept for a target class, and why not.

CLIP heads run a prompt prefilter first (the crop's similarity to the target class's prompts, from
the served prompt model), then head gating. DINOv3 heads have no text tower, so their prefilter is
off. Pure numpy, shared by every client and by the in-process reference.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from headserve.client.decision import Prediction, Reason, Thresholds
from headserve.client.discovery import HeadInfo
from headserve.client.errors import BadInputError, ServerSideError


class GateReason(str, enum.Enum):
    """Why a candidate was kept or dropped; head rejections keep the decision's own reason."""

    KEPT = "kept"
    PROMPT_MISMATCH = "prompt_mismatch"  # prefilter: too far from every prompt of the target class
    OTHER_CLASS = "other_class"  # the head accepted it, for another class
    OUT_OF_DISTRIBUTION = Reason.OUT_OF_DISTRIBUTION.value
    BACKGROUND = Reason.BACKGROUND.value
    LOW_CONFIDENCE = Reason.LOW_CONFIDENCE.value
    AMBIGUOUS = Reason.AMBIGUOUS.value


@dataclass(frozen=True)
class GateConfig:
    """One gating run."""

    target: str  # class name the mining run wants
    thresholds: Thresholds = field(default_factory=Thresholds)  # head gating thresholds
    prompt_threshold: float = 0.2  # CLIP prefilter: min cosine similarity to any prompt of the target
    use_prefilter: bool = True  # False: head gating only, even for heads that have a prompt model


@dataclass(frozen=True)
class GateResult:
    """One candidate's verdict."""

    index: int  # position in the caller's candidate list
    kept: bool
    reason: GateReason
    prediction: Prediction  # the head's answer (computed for every candidate)
    prompt_similarity: float | None = None  # best similarity to the target's prompts; None: no prefilter

    def to_json(self) -> dict:
        row = {"kept": self.kept, "reason": self.reason.value, **self.prediction.to_json()}
        if self.prompt_similarity is not None:
            row["prompt_similarity"] = round(self.prompt_similarity, 6)
        return row


def target_index(info: HeadInfo, target: str) -> int:
    index = info.class_index(target, origin="gate target")
    if index in info.background_indices:
        raise BadInputError(f"gate target {target!r} is a background class of head {info.name!r}; "
                            "gate on a foreground class")
    return index


def target_similarity(info: HeadInfo, similarity: np.ndarray, target: int) -> np.ndarray:
    """(N, P) prompt similarities -> (N,) best similarity among the target's prompts."""
    columns = [j for j, c in enumerate(info.prompt_classes) if c == target]
    if not columns:
        raise ServerSideError(f"head {info.name!r}: its prompt model {info.prompt_model!r} has no prompt for class "
                              f"{info.classes[target]!r} (prompt_classes {list(info.prompt_classes)}); "
                              "re-export the prompts or gate with use_prefilter=False")
    if similarity.shape[1] != len(info.prompt_classes):
        raise ServerSideError(f"head {info.name!r}: prompt model returned {similarity.shape[1]} similarities but "
                              f"prompt_classes lists {len(info.prompt_classes)} prompts; re-export the prompts")
    return similarity[:, columns].max(axis=1)


def gate(info: HeadInfo, predictions: list[Prediction], config: GateConfig,
         similarity: np.ndarray | None = None) -> list[GateResult]:
    """Apply the prefilter (when ``similarity`` (N, P) is given), then head gating, to every candidate."""
    target = target_index(info, config.target)
    best = target_similarity(info, np.asarray(similarity), target) if similarity is not None else None
    results = []
    for i, pred in enumerate(predictions):
        sim = float(best[i]) if best is not None else None
        if sim is not None and sim < config.prompt_threshold:
            reason = GateReason.PROMPT_MISMATCH
        elif not pred.accepted:
            reason = GateReason(pred.reason.value)
        elif pred.label != config.target:
            reason = GateReason.OTHER_CLASS
        else:
            reason = GateReason.KEPT
        results.append(GateResult(i, reason is GateReason.KEPT, reason, pred, sim))
    return results
