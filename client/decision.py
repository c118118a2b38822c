"""From calibrated probabilities to a decision with a reason, per crop.

Pure numpy: the same function decides for the sync client, the asyncio client and the in-process
reference, so served and local decisions cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from headserve.client.discovery import HeadInfo
from headserve.client.errors import ClientConfigError


class Reason(str, enum.Enum):
    """Why a crop was accepted or rejected, in the order the checks run."""

    OUT_OF_DISTRIBUTION = "out_of_distribution"  # ood_score above the head's (or the call's) threshold
    BACKGROUND = "background"  # the top class is a background class
    LOW_CONFIDENCE = "low_confidence"  # top-1 probability below its threshold
    AMBIGUOUS = "ambiguous"  # top-1 minus top-2 probability below the margin
    ACCEPTED = "accepted"


@dataclass(frozen=True)
class Thresholds:
    """Acceptance thresholds for one call; per-class values override the defaults for that top class."""

    min_confidence: float = 0.5  # calibrated top-1 probability a crop needs
    min_margin: float = 0.1  # top-1 minus top-2 probability below which a crop is ambiguous
    ood_threshold: float | None = None  # overrides the head's published threshold; None keeps it
    per_class_confidence: Mapping[str, float] = field(default_factory=dict)  # class name -> min_confidence
    per_class_margin: Mapping[str, float] = field(default_factory=dict)  # class name -> min_margin

    def __post_init__(self) -> None:
        values = {"min_confidence": self.min_confidence, "min_margin": self.min_margin,
                  **{f"per_class_confidence[{k}]": v for k, v in self.per_class_confidence.items()},
                  **{f"per_class_margin[{k}]": v for k, v in self.per_class_margin.items()}}
        for key, v in values.items():
            if not 0.0 <= float(v) <= 1.0:
                raise ClientConfigError(f"threshold {key}={v} is outside [0, 1]; probabilities and margins are in "
                                        "[0, 1]").about(key, v)

    def check_classes(self, info: HeadInfo) -> None:
        for key in (*self.per_class_confidence, *self.per_class_margin):
            info.class_index(key, origin="per-class threshold for")


@dataclass(frozen=True)
class Prediction:
    """One crop's answer."""

    label: str  # top-1 class
    confidence: float  # calibrated probability of ``label``
    probs: np.ndarray  # (C,) calibrated probabilities in class order
    top_k: tuple[tuple[str, float], ...]  # best classes first
    reason: Reason = Reason.ACCEPTED  # why it was accepted or rejected
    margin: float = 1.0  # top-1 minus top-2 probability
    ood_score: float | None = None  # the head's ood_score output, when it has one
    # the served head version that answered (the one the request was pinned to and the answer checked
    # against); "" when decided in-process. Written into every output row so a window that spans a hot
    # swap can be told apart (``headserve drift --version``).
    version: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason is Reason.ACCEPTED

    def to_json(self) -> dict:
        row = {"label": self.label, "confidence": round(self.confidence, 6), "decision": self.reason.value,
               "accepted": self.accepted, "margin": round(self.margin, 6),
               "top_k": [[c, round(p, 6)] for c, p in self.top_k]}
        if self.ood_score is not None:
            row["ood_score"] = round(self.ood_score, 6)
        if self.version:
            row["version"] = self.version
        return row


def decide(info: HeadInfo, probs: np.ndarray, thresholds: Thresholds = Thresholds(), top_k: int = 3,
           ood_scores: np.ndarray | None = None) -> list[Prediction]:
    """Decide every row of ``probs`` (N, C); ``ood_scores`` (N,) when the head has that output."""
    thresholds.check_classes(info)
    ood_threshold = thresholds.ood_threshold if thresholds.ood_threshold is not None else info.ood_threshold
    background = set(info.background_indices)
    k = max(1, min(top_k, len(info.classes)))
    out = []
    for i, row in enumerate(np.asarray(probs, dtype=np.float64)):
        order = np.argsort(-row, kind="stable")
        best = int(order[0])
        label = info.classes[best]
        margin = float(row[best] - row[order[1]]) if len(order) > 1 else 1.0
        score = float(np.ravel(ood_scores[i])[0]) if ood_scores is not None else None
        if score is not None and ood_threshold is not None and score > ood_threshold:
            reason = Reason.OUT_OF_DISTRIBUTION
        elif best in background:
            reason = Reason.BACKGROUND
        elif row[best] < thresholds.per_class_confidence.get(label, thresholds.min_confidence):
            reason = Reason.LOW_CONFIDENCE
        elif margin < thresholds.per_class_margin.get(label, thresholds.min_margin):
            reason = Reason.AMBIGUOUS
        else:
            reason = Reason.ACCEPTED
        out.append(Prediction(label=label, confidence=float(row[best]), probs=row.astype(np.float32),
                              top_k=tuple((info.classes[j], float(row[j])) for j in order[:k]),
                              reason=reason, margin=margin, ood_score=score, version=info.version))
    return out
