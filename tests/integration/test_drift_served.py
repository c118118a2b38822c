"""Drift and decision metrics on a head served by the real tritonserver, end to end (issue #14's acceptance).

A head is trained on digits 0-4 drawn on three texture photographs; its artifact keeps what validation
answered (the drift reference). The served head then classifies, through a client whose observer is a
``DecisionMetrics`` and a ``RollingWindow``, first fresh crops of that same world, then digits 5-9 drawn on
two other photographs, in negative. The first window must pass against the artifact's reference and the second must
not, and the metrics must count exactly what the client decided.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from headserve.client import HeadClient, Observers, Prediction, Reason
from headserve.client.crops import crops_from_yolo
from headserve.client.metrics import enable_metrics
from headserve.drift import DriftThresholds, RollingWindow, compare, reference_of

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
    meta, artifact, server = served_head
    reference = reference_of(meta)  # the figures meta.json stores once, beside the reference
    assert meta.ood_quantile is not None and meta.ood_threshold is not None
    written = json.loads((artifact / "meta.json").read_text())
    assert (written["ood_threshold"], written["ood_quantile"]) == (meta.ood_threshold, meta.ood_quantile)
    assert "quantile" not in written["extra"]["ood"]
    assert not {"ood_threshold", "ood_quantile"} & set(written["extra"]["drift_reference"])
    assert reference.ood_quantile == meta.ood_quantile and reference.ood_threshold == pytest.approx(meta.ood_threshold)
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
    assert metrics.registry.get_sample_value("headserve_client_expected_ood_rate", labels) == pytest.approx(1 - meta.ood_quantile)


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
    text = (tmp_path / "training" / "training.md").read_text()  # no window, nothing compared: not called drift
    assert "training and validation only" in text and "## Checks" not in text
    assert (tmp_path / "training" / "training.png").stat().st_size > 0
    assert not (tmp_path / "training" / "drift.md").exists()


def _headserve(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A headserve command as a user runs it: its own process, its exit status and output."""
    return subprocess.run([sys.executable, "-m", "headserve.app", *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_drift_refuses_a_classify_window_written_across_a_hot_swap_unless_a_version_is_picked(
        served_head, worlds, tmp_path):
    """`classify --output` before a swap, the swap by `export head --server`, `classify --resume` after it: the
    file holds the answers of two heads under one name, and `drift` must not hold both against one reference."""
    from headserve.artifact import load_meta
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig

    meta, artifact, _ = served_head
    assert list(meta.background_indices) == [len(meta.classes) - 1]  # the example head puts background last
    # Version 2: an untrained head of the same name and classes, so its answers differ from what training saw.
    other = write_example_head(get_encoder(meta.encoder.name),
                               ExampleHead(meta.name, seed=5, classes=tuple(meta.classes)), tmp_path / "other")
    assert load_meta(other).classes == meta.classes
    files = []
    for i, ref in enumerate(crops_from_yolo(worlds["familiar"])):
        files.append(tmp_path / "crops" / f"crop_{i:04d}.png")
        files[-1].parent.mkdir(exist_ok=True)
        ref.load().save(files[-1])
    assert len(files) >= 240, len(files)
    before, after = [str(p) for p in files[:120]], [str(p) for p in files[120:240]]
    repo, window = tmp_path / "repo", tmp_path / "window.jsonl"
    export_head(artifact, repo, "local")
    with LocalTriton(ServerConfig(repository=repo, model_control="explicit")) as server:
        classify = ("classify", "--head", meta.name, "--url", server.grpc_url, "--output", str(window))
        run = _headserve(*classify, *before)
        assert run.returncode == 0, run.stderr[-2000:]
        swap = _headserve("export", "head", str(other), "--repo", str(repo), "--server", server.grpc_url)
        assert swap.returncode == 0, swap.stderr[-2000:]
        run = _headserve(*classify, "--resume", *before, *after)
        assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in window.read_text().splitlines()]
    assert [r["image"] for r in rows] == before + after
    assert [r["version"] for r in rows] == ["1"] * 120 + ["2"] * 120  # each row names the version that answered

    drift = ("drift", str(artifact), str(window), "--min-window", "100")
    mixed = _headserve(*drift, "--out", str(tmp_path / "mixed"))
    assert mixed.returncode == 2, mixed.stdout + mixed.stderr
    assert "holds answers of head versions 1, 2 (a hot swap" in mixed.stderr and "Pass --version N" in mixed.stderr
    assert "Traceback" not in mixed.stderr and len(mixed.stderr.strip().splitlines()) == 1
    own = _headserve(*drift, "--version", "1", "--out", str(tmp_path / "v1"))
    assert own.returncode == 0, own.stdout + own.stderr
    assert "window: 120 decided crops of head version 1" in own.stdout
    assert "left out 120 of other versions" in own.stdout and "no drift" in own.stdout
    assert json.loads((tmp_path / "v1" / "drift.json").read_text())["versions"] == ["1"]
    assert "- window: 120 decided crops of served version 1 from" in (tmp_path / "v1" / "drift.md").read_text()
    swapped = _headserve(*drift, "--version", "2", "--out", str(tmp_path / "v2"))
    assert swapped.returncode == 1 and "DRIFT" in swapped.stdout, swapped.stdout + swapped.stderr

    # A file written before rows carried a version is still compared, and the output says what was not checked.
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "version"}) + "\n" for r in rows[:120]))
    legacy = _headserve("drift", str(artifact), str(old), "--min-window", "100", "--out", str(tmp_path / "old"))
    assert legacy.returncode == 0, legacy.stdout + legacy.stderr
    assert "note: the rows record no head version" in legacy.stdout and "version unknown" in legacy.stdout
