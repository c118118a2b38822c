"""The drift report: Markdown naming every check with its value and verdict, a real PNG, written atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headserve.drift import DriftResult, ServedWindow, compare, reference_from_validation
from headserve.drift_report import HeadSummary, edge_labels, markdown, write_drift_report
from headserve.errors import DriftReportError

CLASSES = ("cat", "dog", "fox", "background")


def _answers(n: int, seed: int, signal: float = 4.0, ood_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(len(CLASSES), n)
    logits = rng.normal(0.0, 1.0, (n, len(CLASSES)))
    logits[np.arange(n), truth] += signal
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rng.chisquare(8, n) * ood_scale


def _window(probs: np.ndarray, scores: np.ndarray) -> ServedWindow:
    top = probs.argmax(1)
    return ServedWindow(tuple(CLASSES[i] for i in top), probs[np.arange(len(probs)), top], scores,
                        source="served.jsonl")


REFERENCE = reference_from_validation(*_answers(2000, 0), CLASSES, ood_threshold=15.5, ood_quantile=0.95)
HEAD = HeadSummary(name="pets", version="2", metrics={"macro_f1_fg": 0.91, "ece_after": 0.021, "n_test": 400},
                   reliability=((0.35, 0.3, 20), (0.62, 0.6, 80), (0.93, 0.95, 300)))


def test_the_report_names_each_check_with_its_value_and_verdict_and_draws_a_png(tmp_path: Path):
    result = compare(REFERENCE, _window(*_answers(800, 3, signal=1.5, ood_scale=1.7)))
    assert result.drifted
    path = write_drift_report(tmp_path / "report", result, REFERENCE, HEAD)
    text = path.read_text()
    assert path.name == "drift.md" and "# Drift report: head `pets` version 2" in text
    assert "**drifted**" in text
    for check in result.checks:
        statistic, side = {"class_psi": ("PSI", "above"), "confidence_psi": ("PSI", "above"),
                           "ood_rate": ("p-value", "below"), "ood_scores_ks": ("p-value", "below")}[check.name]
        row = (f"| {check.name} | {statistic} | {check.value:.4g} | {side} {check.threshold:g} | "
               f"{'pass' if check.passed else 'DRIFT'} |")
        assert row in text, row
    assert "| macro_f1_fg | 0.9100 |" in text and "| n_test | 400 |" in text
    assert "![" in text and "(drift.png)" in text and "reliability diagram" in text
    with Image.open(path.parent / "drift.png") as png:
        assert png.format == "PNG" and png.width > 4 * 300  # four panels: classes, confidence, OOD, reliability
    saved = json.loads((path.parent / "drift.json").read_text())
    assert saved["drifted"] is True and saved["head"] == "pets"
    assert [c["name"] for c in saved["checks"]] == [c.name for c in result.checks]


def test_a_window_like_validation_reads_as_no_drift_and_notes_checks_not_run(tmp_path: Path):
    passed = compare(REFERENCE, _window(*_answers(800, 4)))
    assert not passed.drifted
    assert "no drift: every check passed" in markdown(passed, REFERENCE, HEAD)
    bare = reference_from_validation(_answers(500, 0)[0], None, CLASSES)
    result = compare(bare, _window(_answers(300, 5)[0], np.zeros(300)))
    path = write_drift_report(tmp_path / "bare", result, bare, HeadSummary(name="bare"))
    text = path.read_text()
    assert "OOD checks not run" in text and "No training metrics were given." in text
    assert "ood_rate" not in text and "| class_psi |" in text
    with Image.open(path.parent / "drift.png") as png:
        assert png.width < 3 * 420  # two panels only: no OOD scores and no reliability data to draw


def test_a_rewrite_replaces_the_report_whole_and_a_failed_one_leaves_the_old_untouched(tmp_path: Path):
    target = tmp_path / "report"
    first = compare(REFERENCE, _window(*_answers(800, 6)))
    write_drift_report(target, first, REFERENCE, HEAD)
    before = (target / "drift.md").read_text()
    # A result with bins that are not this reference's: refused while drawing, after the staging began.
    other = reference_from_validation(_answers(2000, 1, signal=0.5)[0], None, CLASSES)
    mismatched = compare(other, _window(*_answers(800, 7)))
    mismatched = dataclasses.replace(mismatched, window_confidence=dataclasses.replace(
        mismatched.window_confidence, edges=(0.0, 1.0), counts=(800,)))
    with pytest.raises(DriftReportError, match=r"bins \(0.0, 1.0\) are not the reference's"):
        write_drift_report(target, mismatched, REFERENCE, HEAD)
    assert (target / "drift.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging directory left behind


def test_reliability_points_that_are_not_probabilities_are_refused_by_name():
    with pytest.raises(DriftReportError, match=r"reliability point \(1.5, 0.9, 10\) of head 'pets'"):
        HeadSummary(name="pets", reliability=((1.5, 0.9, 10),))


def test_the_result_counts_window_classes_on_the_reference_order():
    result: DriftResult = compare(REFERENCE, _window(*_answers(400, 8)))
    assert list(result.window_class_counts) == list(CLASSES) and sum(result.window_class_counts.values()) == 400


def test_the_checks_table_names_each_rows_statistic_apart_from_its_value():
    text = markdown(compare(REFERENCE, _window(*_answers(800, 4))), REFERENCE, HEAD)
    assert "| check | statistic | value | fails | verdict | detail |" in text
    assert "| check | value |" not in text


def test_without_a_window_the_files_are_named_for_training_not_drift(tmp_path: Path):
    path = write_drift_report(tmp_path / "report", None, REFERENCE, HEAD)
    assert path.name == "training.md"
    assert sorted(p.name for p in path.parent.iterdir()) == ["training.json", "training.md", "training.png"]
    assert "(training.png)" in path.read_text()


def test_the_reference_size_says_it_counts_objects_and_training_sizes_say_what_they_count():
    head = HeadSummary(name="pets", metrics={"n_val": 108, "ood_flagged_test_fg": 0.05})
    text = markdown(None, REFERENCE, head)
    assert f"- reference: {REFERENCE.n} validation objects (foreground crops only; training's n_val also counts " \
           "background crops)" in text
    assert "| n_val | 108 | validation crops (early stopping, calibration), background crops included |" in text
    assert "| ood_flagged_test_fg | 0.0500 | share of test objects (foreground crops) above the OOD threshold;" in text


@pytest.mark.parametrize(("edges", "labels"), [
    ((0.0, 0.5, 1.0), ["0-0.5", "0.5-1"]),
    ((0.9991, 0.9995, 0.9998, 1.0), ["0.9991-0.9995", "0.9995-0.9998", "0.9998-1"]),  # .3g made these "1-1"
])
def test_histogram_bins_are_labelled_with_enough_digits_to_tell_their_edges_apart(edges, labels):
    assert edge_labels(edges) == labels
