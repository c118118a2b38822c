"""Out-of-distribution score: Mahalanobis distance to the nearest class prototype.

Prototypes are the class means of the training embeddings; the covariance is shared across classes
(Lee et al., 2018) and shrunk by scikit-learn's Ledoit-Wolf estimator, so it stays invertible when
there are fewer examples than dimensions. The threshold is a quantile of the validation split's
in-distribution scores: by construction about ``1 - quantile`` of known crops are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headserve.head import ServingHead


@dataclass
class OODStats:
    whiten: np.ndarray  # (D, D) W with W W^T = shared precision
    protos: np.ndarray  # (C, D) class means, whitened (mean @ W)


def fit_ood(emb: np.ndarray, labels: np.ndarray, num_classes: int) -> OODStats:
    """Class prototypes and the shrunk shared precision of ``emb`` (N, D)."""
    from sklearn.covariance import LedoitWolf

    emb = emb.astype(np.float64)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    means = np.zeros((num_classes, emb.shape[1]))
    for c in present:
        means[c] = emb[labels == c].mean(0)
    for c in range(num_classes):  # a class with no examples repeats a present one: the minimum is unchanged
        if c not in present:
            means[c] = means[present[0]]
    centred = emb - means[labels]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    precision = np.linalg.inv(cov)
    whiten = np.linalg.cholesky((precision + precision.T) / 2)  # P = L L^T, so |x L|^2 = x P x^T
    return OODStats(whiten.astype(np.float32), (means @ whiten).astype(np.float32))


def attach_ood(head: ServingHead, stats: OODStats) -> None:
    head.ood_whiten.copy_(torch.from_numpy(stats.whiten))
    head.ood_protos.copy_(torch.from_numpy(stats.protos))


def ood_scores(head: ServingHead, emb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head.ood_score(torch.from_numpy(emb).float()).numpy()[:, 0]


def choose_threshold(val_scores: np.ndarray, quantile: float = 0.95) -> float:
    """The score above which a crop is flagged: the ``quantile`` of known validation crops."""
    return float(np.quantile(val_scores, quantile))
