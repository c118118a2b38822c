"""Drift and decision metrics on a head served by the real tritonserver, end to end.

The client classifies crops like the training data, then crops of digits the head never learnt drawn in
inverted colours; every answered batch goes to a ``DecisionMetrics`` and a ``RollingWindow`` as the
clients will report it (their ``observer``). The first window must pass against the reference, the second
must not, and the metrics must count exactly what the client decided.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headserve.client import HeadClient, HeadInfo, Prediction, Reason
from headserve.client.crops import crops_from_yolo
from headserve.client.metrics import DecisionMetrics, MetricsConfig
from headserve.drift import DriftThresholds, RollingWindow, compare, reference_from_validation

pytestmark = pytest.mark.integration
THRESHOLDS = DriftThresholds(min_window=100)  # a few hundred crops per window keeps the test quick


def _crops(root: Path, seed: int, classes: tuple[int, ...] = (0, 1, 2, 3, 4), invert: bool = False) -> list:
    from headserve.train.synth import SynthConfig, build_digits_dataset

    build_digits_dataset(root, SynthConfig(num_images=120, seed=seed, classes=classes))
    if invert:  # another look: the same textures and strokes with every colour inverted
        for path in (root / "images").glob("*.png"):
            with Image.open(path) as image:
                inverted = Image.fromarray(255 - np.asarray(image.convert("RGB")))
            inverted.save(path)
    return [ref.load() for ref in crops_from_yolo(root)]


def _classify(client: HeadClient, head: str, crops: list, observers: tuple = ()) -> tuple[HeadInfo, list[Prediction]]:
    """Classify in requests of 32 crops, telling each observer about each request as the clients will."""
    import time

    info = client.info(head)
    out: list[Prediction] = []
    for start in range(0, len(crops), 32):
        t0 = time.perf_counter()
        batch = client.classify(head, crops[start:start + 32])
        for observer in observers:
            observer.observe_batch(info, batch, time.perf_counter() - t0)
        out += batch
    return info, out


def test_a_served_head_flags_the_shifted_window_and_not_the_familiar_one_and_counts_its_decisions(
        trained_heads, triton, tmp_path):
    head = trained_heads["clip:tiny"].name
    quantile = float(trained_heads["clip:tiny"].outcome.meta.extra["ood"]["quantile"])
    metrics = DecisionMetrics(config=MetricsConfig(ood_quantiles={head: quantile}))
    with HeadClient(triton.grpc_url) as client:
        info, validation = _classify(client, head, _crops(tmp_path / "reference", seed=7))
        assert info.ood_threshold is not None and info.has_ood_score
        reference = reference_from_validation(np.stack([p.probs for p in validation]),
                                              np.array([p.ood_score for p in validation]), info.classes,
                                              info.ood_threshold, quantile)
        familiar = RollingWindow(capacity=5000)
        _, seen = _classify(client, head, _crops(tmp_path / "familiar", seed=8), (familiar, metrics))
        shifted = RollingWindow(capacity=5000)
        _, strange = _classify(client, head, _crops(tmp_path / "shifted", seed=9, classes=(7, 8, 9), invert=True),
                               (shifted, metrics))
    assert len(seen) >= 100 and len(strange) >= 100
    calm = compare(reference, familiar.window(head), THRESHOLDS)
    assert not calm.drifted, [c.detail for c in calm.checks if not c.passed]
    drift = compare(reference, shifted.window(head), THRESHOLDS)
    assert drift.drifted, [c.detail for c in drift.checks]
    assert len(calm.checks) == len(drift.checks) == 4  # the OOD checks ran: the head publishes scores and threshold

    decided = collections.Counter(p.reason.value for p in seen + strange)
    for reason in Reason:
        got = metrics.registry.get_sample_value("headserve_client_decisions_total",
                                                {"head": head, "version": info.version, "reason": reason.value})
        assert (got or 0) == decided[reason.value], reason
    labels = collections.Counter(p.label for p in seen + strange)
    for label, count in labels.items():
        assert metrics.registry.get_sample_value("headserve_client_predicted_class_total",
                                                 {"head": head, "version": info.version, "class": label}) == count
    assert metrics.registry.get_sample_value("headserve_client_ood_score_count",
                                             {"head": head, "version": info.version}) == len(seen) + len(strange)
    assert metrics.registry.get_sample_value("headserve_client_expected_ood_rate",
                                             {"head": head, "version": info.version}) == pytest.approx(1 - quantile)
