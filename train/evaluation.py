"""Held-out metrics of a head: foreground-only F1 and friends, and calibration error.

scikit-learn computes F1/precision/recall; torchmetrics computes the expected calibration error
(15 equal-width bins, L1), the numbers the earlier sweep reports used. Differences between heads
and ECE come with percentile bootstrap intervals over the test crops (seeded), so a table can say
which gaps a re-run on other crops would keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(
        multiclass_calibration_error(
            torch.from_numpy(np.asarray(probs, dtype=np.float32)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            num_classes=probs.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                           background: Sequence[int] = ()) -> dict[str, object]:
    """Foreground-only macro/weighted F1, macro precision/recall, per-class table and confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = probs.argmax(axis=1)
    fg = [i for i in range(len(classes)) if i not in set(background)]
    p, r, f, support = precision_recall_fscore_support(labels, pred, labels=fg, zero_division=0)
    weights = support / max(1, support.sum())
    return {
        "macro_f1_fg": float(f.mean()),
        "weighted_f1_fg": float((f * weights).sum()),
        "macro_precision_fg": float(p.mean()),
        "macro_recall_fg": float(r.mean()),
        "accuracy": float((pred == labels).mean()),
        "per_class": {
            classes[c]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, c in enumerate(fg)
        },
        "confusion": confusion_matrix(labels, pred, labels=list(range(len(classes)))).tolist(),
    }


def ood_auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """AUROC of telling held-out-class crops (positives) from known ones by OOD score (scikit-learn)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(known_scores)), np.ones(len(unknown_scores))]
    return float(roc_auc_score(y, np.r_[known_scores, unknown_scores]))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per equal-width confidence bin, for the reliability diagram."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [(float(conf[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
            for b in range(n_bins) if np.any(bins == b)]


def macro_f1_fg(pred: np.ndarray, labels: np.ndarray, fg: Sequence[int], n_classes: int) -> float:
    """Foreground macro F1 from one confusion count; equals scikit-learn's (a unit test checks it).

    Hand-written because the bootstrap calls it thousands of times and scikit-learn's input checks
    cost about a millisecond per call.
    """
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm)[list(fg)].astype(np.float64)
    predicted, actual = cm.sum(0)[list(fg)], cm.sum(1)[list(fg)]
    denom = predicted + actual
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval."""

    value: float  # the statistic on the full test set
    low: float  # 2.5% bootstrap percentile
    high: float  # 97.5% bootstrap percentile

    @property
    def spans_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def plain(self) -> str:
        """Unsigned rendering, for statistics that are not differences (ECE)."""
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


BOOTSTRAP_REPS = 1000  # resamples of the test crops; the 95% interval's ends move by ~0.002 between seeds
BOOTSTRAP_SEED = 0  # fixed, so every printed interval is reproduced by a re-run


def _resamples(n: int, reps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, reps: int = BOOTSTRAP_REPS,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile 95% interval of ``statistic(indices)`` over test crops resampled with replacement."""
    values = np.array([statistic(idx) for idx in _resamples(n, reps, seed)])
    return Interval(statistic(np.arange(n)), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def paired_f1_difference(labels: np.ndarray, preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray],
                         fg: Sequence[int], n_classes: int, reps: int = BOOTSTRAP_REPS,
                         seed: int = BOOTSTRAP_SEED) -> Interval:
    """Paired bootstrap of mean-over-seeds macro F1 (fg) of A minus that of B, on the same resampled crops.

    ``preds_a``/``preds_b`` hold one argmax vector per training seed (one for a deterministic model);
    each resample scores every seed's predictions on the same crops, so the interval covers the test
    set's sampling noise of the difference, with seed noise averaged as in the table's mean.
    """
    def diff(idx: np.ndarray) -> float:
        y = labels[idx]
        a = np.mean([macro_f1_fg(p[idx], y, fg, n_classes) for p in preds_a])
        b = np.mean([macro_f1_fg(p[idx], y, fg, n_classes) for p in preds_b])
        return float(a - b)

    return bootstrap_interval(diff, len(labels), reps, seed)


def ece_interval(probs: np.ndarray, labels: np.ndarray, reps: int = BOOTSTRAP_REPS,
                 seed: int = BOOTSTRAP_SEED) -> Interval:
    """ECE (15 bins) with its percentile bootstrap 95% interval over test crops."""
    return bootstrap_interval(lambda idx: expected_calibration_error(probs[idx], labels[idx]), len(labels), reps, seed)


def comparison(interval: Interval) -> str:
    """How a table words a difference: a tie when its 95% interval spans zero."""
    if interval.spans_zero:
        return "tie"
    return "better" if interval.low > 0 else "worse"
