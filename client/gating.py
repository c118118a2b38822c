"""Recipe gating: which candidate crops of a mining run are kept for a target class, and why not.

CLIP heads run a prompt prefilter first (the crop's similarity to the target class's prompts, from
the served prompt model), then head gating. DINOv3 heads have no text tower, so their prefilter is
off and their compute estimate has no prefilter term. Pure numpy, shared by every client and by the
in-process reference.
"""

from __future__ import annotations

import enum
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

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


@dataclass(frozen=True)
class ComputeEstimate:
    """Expected cost of a mining run, from latencies measured on the serving models."""

    head: str
    candidates: int  # crops the run will gate
    preprocess_s: float  # client-side decode + resize, per crop
    head_s: float  # encoder + head ensemble, per crop, at the measured batch size
    prefilter_s: float | None  # prompt model, per crop; None when the head has no prefilter (DINOv3)
    batch_size: int  # batch size the latencies were measured at

    @property
    def per_candidate_without_prefilter_s(self) -> float:
        return self.preprocess_s + self.head_s

    @property
    def per_candidate_with_prefilter_s(self) -> float | None:
        if self.prefilter_s is None:
            return None
        return self.per_candidate_without_prefilter_s + self.prefilter_s

    def to_json(self) -> dict:
        with_pf = self.per_candidate_with_prefilter_s
        return {
            "head": self.head, "candidates": self.candidates, "batch_size": self.batch_size,
            "preprocess_ms_per_crop": self.preprocess_s * 1e3, "head_ms_per_crop": self.head_s * 1e3,
            "prefilter_ms_per_crop": None if self.prefilter_s is None else self.prefilter_s * 1e3,
            "without_prefilter": {"s_per_candidate": self.per_candidate_without_prefilter_s,
                                  "s_total": self.per_candidate_without_prefilter_s * self.candidates},
            "with_prefilter": None if with_pf is None else {"s_per_candidate": with_pf,
                                                            "s_total": with_pf * self.candidates},
        }


@dataclass(frozen=True)
class EstimateProbe:
    """The synthetic requests an estimate times: one batch of each kind, sized like real traffic."""

    batch_size: int  # crops per request, capped by the head's max batch size
    image: np.ndarray  # (2S, 1.5S, 3) uint8: a crop larger than the input, so resizing is timed
    pixels: np.ndarray  # (B, S, S, 3) uint8: the head ensemble's input
    embeddings: np.ndarray  # (B, D) float32 unit vectors: the prompt model's input

    @classmethod
    def for_head(cls, info: HeadInfo, batch_size: int) -> "EstimateProbe":
        b = max(1, min(batch_size, info.max_batch_size))
        rng = np.random.default_rng(0)
        size = info.preprocess.input_size
        emb = rng.standard_normal((b, info.embedding_dim or 1)).astype(np.float32)
        return cls(b, rng.integers(0, 256, size=(2 * size, 3 * size // 2, 3), dtype=np.uint8),
                   rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8),
                   emb / np.linalg.norm(emb, axis=1, keepdims=True))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, one at a time."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
