"""What gating a mining run will cost: per-crop latencies measured on the serving models, and their probe.

DINOv3 heads have no prefilter, so their estimate has no prefilter term. The clients time the requests;
what is timed and how the numbers combine lives here.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from headserve.client.discovery import HeadInfo


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
