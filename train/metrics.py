"""Held-out metrics of a head: foreground-only F1 and friends, and calibration error.

scikit-learn computes F1/precision/recall; torchmetrics computes the expected calibration error
(15 equal-width bins, L1), the numbers the earlier sweep reports used.
"""

from __future__ import annotations

from typing import Sequence

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
