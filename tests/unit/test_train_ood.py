"""The OOD detector: Mahalanobis scores, and a threshold set by the crops auto-class would accept."""

from __future__ import annotations

import numpy as np

from headserve.head import HeadConfig, MLPHead, ServingHead
from headserve.train.ood import attach_ood, choose_threshold, fit_ood, foreground, ood_scores


def test_threshold_is_the_quantile_of_foreground_validation_crops_only():
    scores = np.r_[np.linspace(0.0, 1.0, 101), np.full(50, 9.0)]  # background crops score far higher
    labels = np.r_[np.zeros(101, int), np.full(50, 2)]
    assert choose_threshold(scores, labels, background=[2], quantile=0.95) == np.quantile(scores[:101], 0.95)
    assert choose_threshold(scores, labels, background=[], quantile=0.95) == np.quantile(scores, 0.95)


def test_threshold_falls_back_to_every_crop_when_validation_holds_only_background():
    scores, labels = np.arange(10.0), np.full(10, 1)
    assert choose_threshold(scores, labels, background=[1], quantile=0.5) == 4.5


def test_foreground_mask_drops_background_labels():
    assert foreground(np.array([0, 3, 1, 3]), [3]).tolist() == [True, False, True, False]


def test_crops_far_from_every_prototype_score_higher_than_known_ones():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 6)) * 4
    y = rng.integers(0, 3, 300)
    emb = (centres[y] + rng.standard_normal((300, 6))).astype(np.float32)
    head = ServingHead(MLPHead(HeadConfig(6, 3)))
    attach_ood(head, fit_ood(emb, y, 3))
    far = (rng.standard_normal((50, 6)) * 4 + 20).astype(np.float32)
    assert np.median(ood_scores(head, far)) > np.quantile(ood_scores(head, emb), 0.99)
