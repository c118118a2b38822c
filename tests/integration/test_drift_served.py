"""Drift and decision metrics on a head served by the real tritonserver, end to end (issue #14's acceptance).

A head is trained on digits 0-4 drawn on three texture photographs; its artifact keeps what validation
answered (the drift reference). The served head then classifies, through a client whose observer is a
``DecisionMetrics`` and a ``RollingWindow``, first fresh crops of that same world, then digits 5-9 drawn on
two other photographs, in negative. The first window must pass against the artifact's reference and the second must
not, and the metrics must count exactly what the client decided.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from headserve.client import HeadClient, Observers, Prediction, Reason
from headserve.client.crops import crops_from_yolo
from headserve.client.metrics import enable_metrics
from headserve.drift import DriftReference, DriftThresholds, RollingWindow, compare

pytestmark = pytest.mark.integration
THRESHOLDS = DriftThresholds(min_window=100)  # a few hundred crops per window keeps the test quick
OTHER_WORLD = {"classes": (5, 6, 7, 8, 9), "textures": ("camera", "moon"), "negative": True}


def _world(root: Path, seed: int, negative: bool = False, **world) -> Path:
    """A YOLO dataset of 150 images; ``negative`` turns every image into its photographic negative."""
    from headserve.train.synth import SynthConfig, build_digits_dataset

    build_digits_dataset(root, SynthConfig(num_images=150, seed=seed, **world))
    if negative:
        for path in (root / "images").glob("*.png"):
            with Image.open(path) as image:
                inverted = ImageOps.invert(image.convert("RGB"))
            inverted.save(path)
    return root


def _crops(root: Path) -> list:
    return [ref.load() for ref in crops_from_yolo(root)]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worlds")
    return {"familiar": _world(root / "familiar", seed=8), "shifted": _world(root / "shifted", seed=9, **OTHER_WORLD)}


@pytest.fixture(scope="module")
def served_head(tmp_path_factory: pytest.TempPathFactory):
    """A head trained on 360 images (a validation split big enough for a reference), served on its own server."""
    from headserve.encoders import get_encoder
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.synth import SynthConfig, build_digits_dataset
    from headserve.train.trainer import TrainConfig

    root = tmp_path_factory.mktemp("drift")
    data = build_digits_dataset(root / "data", SynthConfig(num_images=360))
    outcome = train_from_yolo(TrainRequest(dataset=data, encoder=get_encoder("clip:tiny"), out=root / "head",
                                           name="drifty", hidden=(64,), train=TrainConfig(epochs=40)))
    export_head(outcome.artifact, root / "repo", "local")
    with LocalTriton(ServerConfig(repository=root / "repo")) as server:
        yield outcome.meta, outcome.artifact, server


def test_a_served_head_flags_the_shifted_window_and_not_the_familiar_one_and_counts_its_decisions(
        served_head, worlds):
    meta, _, server = served_head
    reference = DriftReference.from_dict(meta.extra["drift_reference"], origin="meta.json")
    quantile = float(meta.extra["ood"]["quantile"])
    assert reference.ood_quantile == quantile and reference.ood_threshold == pytest.approx(meta.ood_threshold)
    metrics = enable_metrics()  # the one call; the expected OOD rate comes from the quantile the head publishes
    familiar, shifted = RollingWindow(capacity=5000), RollingWindow(capacity=5000)
    seen: list[Prediction] = []
    strange: list[Prediction] = []
    with HeadClient(server.grpc_url, observer=Observers(metrics, familiar)) as client:
        crops = _crops(worlds["familiar"])
        for start in range(0, len(crops), 32):  # one request per call: the observer sees each
            seen += client.classify(meta.name, crops[start:start + 32])
        version = client.info(meta.name).version
    with HeadClient(server.grpc_url, observer=Observers(metrics, shifted)) as client:
        crops = _crops(worlds["shifted"])
        for start in range(0, len(crops), 32):
            strange += client.classify(meta.name, crops[start:start + 32])
    assert len(seen) >= 100 and len(strange) >= 100
    calm = compare(reference, familiar.window(meta.name), THRESHOLDS)
    assert not calm.drifted, [c.detail for c in calm.checks if not c.passed]
    drift = compare(reference, shifted.window(meta.name), THRESHOLDS)
    assert drift.drifted, [c.detail for c in drift.checks]
    assert len(calm.checks) == len(drift.checks) == 4  # the OOD checks ran: the head publishes scores and threshold

    labels = {"head": meta.name, "version": version}
    decided = collections.Counter(p.reason.value for p in seen + strange)
    for reason in Reason:
        got = metrics.registry.get_sample_value("headserve_client_decisions_total", {**labels, "reason": reason.value})
        assert (got or 0) == decided[reason.value], reason
    for label, count in collections.Counter(p.label for p in seen + strange).items():
        assert metrics.registry.get_sample_value("headserve_client_predicted_class_total",
                                                 {**labels, "class": label}) == count
    assert metrics.registry.get_sample_value("headserve_client_ood_score_count", labels) == len(seen) + len(strange)
    assert metrics.registry.get_sample_value("headserve_client_expected_ood_rate", labels) == pytest.approx(1 - quantile)


def test_drift_command_exits_1_on_the_shifted_window_of_classify_output_and_report_shows_training(
        served_head, worlds, tmp_path):
    """The cron-job path: `classify --output` writes the window, `drift` judges it by its exit status."""
    import json

    from headserve.app.cli import main

    meta, artifact_dir, server = served_head
    artifact = str(artifact_dir)
    status = {}
    for name, root in worlds.items():
        window = tmp_path / f"{name}.jsonl"
        assert main(["classify", "--yolo", str(root), "--head", meta.name, "--url", server.grpc_url,
                     "--output", str(window)]) == 0
        status[name] = main(["drift", artifact, str(window), "--out", str(tmp_path / f"{name}-report")])
        verdict = json.loads((tmp_path / f"{name}-report" / "drift.json").read_text())
        assert verdict["drifted"] is (name == "shifted") and verdict["window_size"] >= 100, verdict
    assert status == {"familiar": 0, "shifted": 1}
    text = (tmp_path / "shifted-report" / "drift.md").read_text()
    assert "| class_psi |" in text and "DRIFT" in text and "macro_f1_fg" in text

    assert main(["report", artifact, "--out", str(tmp_path / "training")]) == 0
    text = (tmp_path / "training" / "drift.md").read_text()
    assert "training and validation only" in text and "## Checks" not in text
    assert (tmp_path / "training" / "drift.png").stat().st_size > 0
