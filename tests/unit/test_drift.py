"""Drift against training: a window drawn like validation passes, a shifted one fails by the checks it shifted."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from headserve.client import HeadInfo, decide
from headserve.contract import EncoderIdentity, ServedHead
from headserve.drift import (
    OOD_SAMPLE_SIZE,
    DriftReference,
    DriftThresholds,
    RollingWindow,
    ServedWindow,
    beta_binomial_upper_p,
    binomial_upper_p,
    compare,
    ks_2samp,
    ood_edges,
    psi,
    read_window,
    reference_from_validation,
)
from headserve.encoders import get_encoder
from headserve.errors import DriftError

CLASSES = ("cat", "dog", "fox", "owl", "background")
PRIOR = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
QUANTILE = 0.95


def _answers(n: int, seed: int, prior: np.ndarray = PRIOR, signal: float = 4.0,
             ood_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking probabilities (n, 5) and OOD scores (n,) of a head on crops from one distribution."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(len(CLASSES), n, p=prior)
    logits = rng.normal(0.0, 1.0, (n, len(CLASSES)))
    logits[np.arange(n), truth] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = rng.chisquare(16, n) * ood_scale  # squared Mahalanobis distances in 16 dimensions
    return probs, scores


def _reference(n: int = 3000, seed: int = 0) -> DriftReference:
    probs, scores = _answers(n, seed)
    threshold = float(np.quantile(scores, QUANTILE))
    return reference_from_validation(probs, scores, CLASSES, threshold, QUANTILE, seed=0)


def _window(probs: np.ndarray, scores: np.ndarray | None, source: str = "test window") -> ServedWindow:
    top = probs.argmax(axis=1)
    return ServedWindow(labels=tuple(CLASSES[i] for i in top), confidence=probs[np.arange(len(probs)), top],
                        ood_scores=scores, source=source)


def _info() -> HeadInfo:
    served = ServedHead(name="h", classes=CLASSES, background_indices=(4,),
                        encoder=EncoderIdentity.from_spec(get_encoder("clip:tiny")),
                        ood_threshold=float(_reference().ood_threshold or 0))
    return HeadInfo(served, max_batch_size=8, outputs=("probs", "ood_score"), version="3")


def test_a_window_drawn_like_validation_is_not_flagged_by_any_check():
    reference = _reference()
    for seed in (1, 2, 3):
        result = compare(reference, _window(*_answers(1000, seed)))
        assert [c.name for c in result.checks] == ["class_psi", "confidence_psi", "ood_rate", "ood_scores_ks"]
        assert not result.drifted, [c.detail for c in result.checks if not c.passed]
        assert result.check("class_psi").value < 0.02


def test_a_shifted_window_is_flagged_by_every_check_it_shifted():
    reference = _reference()
    shifted = compare(reference, _window(*_answers(1000, 7, prior=np.array([0.05, 0.05, 0.1, 0.2, 0.6]),
                                                   signal=1.5, ood_scale=1.6)))
    assert shifted.drifted
    assert {c.name: c.passed for c in shifted.checks} == {"class_psi": False, "confidence_psi": False,
                                                          "ood_rate": False, "ood_scores_ks": False}
    assert shifted.check("class_psi").value > 0.25 and shifted.check("ood_rate").value < 1e-6


@pytest.mark.parametrize("shift, failing", [
    ({"prior": np.array([0.6, 0.1, 0.1, 0.1, 0.1])}, {"class_psi"}),
    ({"signal": 1.0}, {"confidence_psi"}),
    ({"ood_scale": 1.5}, {"ood_rate", "ood_scores_ks"}),
])
def test_each_kind_of_shift_fails_its_own_checks_and_not_the_others(shift, failing):
    result = compare(_reference(), _window(*_answers(2000, 11, **shift)))
    assert {c.name for c in result.checks if not c.passed} == failing


def test_a_slight_but_significant_ood_excess_on_a_huge_window_is_not_called_drift():
    reference = _reference()
    probs, scores = _answers(200_000, 5)
    threshold = reference.ood_threshold
    assert threshold is not None
    # push 1% more crops past the threshold: 6% instead of 5%, a p-value near zero but far from 1.5x expected
    below = np.flatnonzero(scores <= threshold)[: int(0.01 * len(scores))]
    scores[below] = threshold * 1.01
    check = compare(reference, _window(probs, scores)).check("ood_rate")
    assert check.value < 0.01 and check.passed, check.detail


def test_the_ood_rate_test_allows_for_a_threshold_set_on_few_validation_crops():
    # 40 validation crops, 2 above the threshold: the rate on new crops like them is anywhere from 1% to 15%
    probs, scores = _answers(40, 0)
    threshold = float(np.sort(scores)[-3])
    small = reference_from_validation(probs, scores, CLASSES, threshold, QUANTILE)
    window_probs, window_scores = _answers(300, 1)
    window_scores = np.where(np.arange(300) < 30, threshold * 2, np.minimum(window_scores, threshold))  # 10%
    check = compare(small, _window(window_probs, window_scores)).check("ood_rate")
    assert check.passed and check.value > 0.01 and "of 40 crops, beta-binomial" in check.detail
    # the same 10% against a rate known from 3,000 crops is significant
    large = _reference()
    scores_large = np.where(np.arange(300) < 30, 1e6, np.minimum(window_scores, large.ood_threshold or 0))
    assert compare(large, _window(window_probs, scores_large)).check("ood_rate").value < 0.01


def test_the_reference_round_trips_through_json_and_a_file_written_atomically(tmp_path: Path):
    reference = _reference()
    assert DriftReference.from_dict(json.loads(json.dumps(reference.to_dict()))) == reference
    path = reference.save(tmp_path / "drift" / "reference.json")
    assert DriftReference.load(path) == reference
    assert [p.name for p in path.parent.iterdir()] == ["reference.json"]  # no temp file left behind
    assert len(reference.ood_sample) == OOD_SAMPLE_SIZE and reference.n == 3000
    assert reference.expected_ood_rate == pytest.approx(0.05)
    assert reference.validation_ood_rate == pytest.approx(0.05, abs=0.001)


def test_a_reference_without_ood_runs_the_psi_checks_and_says_which_did_not_run():
    probs, _ = _answers(500, 0)
    reference = reference_from_validation(probs, None, CLASSES)
    result = compare(reference, _window(*_answers(500, 1)))
    assert [c.name for c in result.checks] == ["class_psi", "confidence_psi"]
    assert "OOD checks not run" in result.notes[0]


def test_the_written_out_statistics_agree_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 700), rng.normal(0.15, 1, 900)
    d, p = ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    # Kolmogorov's limit law at sqrt(nm/(n+m)) D; scipy's "asymp" uses the finite-n law at round(nm/(n+m)): near
    z = np.sqrt(700 * 900 / 1600) * d
    assert p == pytest.approx(stats.kstwobign.sf(z), rel=1e-9) and p == pytest.approx(ref.pvalue, rel=0.1)
    for k, n, p0 in ((0, 10, 0.05), (3, 10, 0.05), (70, 1000, 0.05), (5000, 100_000, 0.05), (12, 12, 0.3)):
        assert binomial_upper_p(k, n, p0) == pytest.approx(stats.binomtest(k, n, p0, alternative="greater").pvalue,
                                                           rel=1e-7), (k, n, p0)
    for k, n, a, b in ((0, 10, 2.5, 28.5), (3, 50, 2.5, 28.5), (36, 249, 1.5, 29.5), (900, 10_000, 100.5, 1900.5)):
        # the sum of scipy's pmf: its sf loses digits far in the tail (1.89e-10 where the sum is 2.07e-10)
        want = float(np.sum(stats.betabinom.pmf(np.arange(k, n + 1), n, a, b)))
        assert beta_binomial_upper_p(k, n, a, b) == pytest.approx(want, rel=1e-7), k
    # PSI: the textbook formula on smoothed proportions; zero only for identical distributions
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    r, w = np.array([10.5, 20.5, 0.5]) / 31.5, np.array([0.5, 20.5, 10.5]) / 31.5
    assert psi([10, 20, 0], [0, 20, 10]) == pytest.approx(float(np.sum((w - r) * np.log(w / r))))


def test_the_classify_output_is_read_as_a_window_with_errors_and_skips_counted(tmp_path: Path):
    info = _info()
    probs, scores = _answers(150, 4)
    predictions = decide(info, probs, ood_scores=scores)
    path = tmp_path / "preds.jsonl"
    rows = [{"image": f"{i}.png", **p.to_json()} for i, p in enumerate(predictions)]
    rows.insert(5, {"image": "broken.png", "error": "ImageDecodeError: not an image"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    window = read_window(path)
    assert len(window) == 150 and window.skipped == 1 and window.source == str(path)
    assert window.labels == tuple(p.label for p in predictions)
    assert window.ood_scores is not None and np.allclose(window.ood_scores, scores, atol=1e-6)
    assert compare(_reference(), window).window_size == 150


def test_a_classify_file_that_is_not_json_lines_names_the_line(tmp_path: Path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"label": "cat", "confidence": 0.9}\n{"label": "cat", "conf\n')
    with pytest.raises(DriftError, match=r"preds.jsonl:2: not a JSON line"):
        read_window(path)
    with pytest.raises(DriftError, match="cannot be read"):
        read_window(tmp_path / "missing.jsonl")
    path.write_text('{"label": "cat", "confidence": 0.9, "ood_score": 1.0}\n{"label": "cat", "confidence": 0.9}\n')
    with pytest.raises(DriftError, match="some rows carry an ood_score and some do not"):
        read_window(path)


def test_every_classify_row_records_the_head_version_that_answered_it():
    row = decide(_info(), _answers(1, 2)[0])[0].to_json()
    assert row["version"] == "3"
    in_process = replace(_info(), version="")  # decided locally: no served version to record
    assert "version" not in decide(in_process, _answers(1, 2)[0])[0].to_json()


def _rows(version: str | None, n: int, seed: int) -> list[dict]:
    """Rows as `classify --output` writes them, answered by head ``version`` (None: an older headserve's rows)."""
    probs, scores = _answers(n, seed)
    rows = [{"image": f"{seed}_{i}.png", **p.to_json()} for i, p in enumerate(decide(_info(), probs, ood_scores=scores))]
    for row in rows:
        row.pop("version")
        if version is not None:
            row["version"] = version
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_classify_file_spanning_a_hot_swap_is_refused_unless_a_version_is_picked(tmp_path: Path):
    path = _write(tmp_path / "swap.jsonl", _rows("3", 120, 1) + _rows("10", 130, 2))
    with pytest.raises(DriftError, match=r"swap.jsonl holds answers of head versions 3, 10 \(a hot swap.*"
                                         r"Pass `version` N"):
        read_window(path)
    window = read_window(path, version="10")
    assert len(window) == 130 and window.versions == ("10",)
    assert window.notes == ("compared the 130 answers of head version 10; left out 120 of other versions",)
    assert "left out 120 of other versions" in compare(_reference(), window).notes[0]
    with pytest.raises(DriftError, match=r"no answers of head version '4' \(versions in it: 3, 10\)"):
        read_window(path, version="4")
    # Rows of an older headserve (no version) beside versioned rows: which version answered them is unknown.
    mixed = _write(tmp_path / "mixed.jsonl", _rows(None, 120, 1) + _rows("3", 130, 2))
    with pytest.raises(DriftError, match=r"head versions 3 and 120 rows recording no version"):
        read_window(mixed)
    assert len(read_window(mixed, version="3")) == 130


def test_a_classify_file_written_before_rows_carried_a_version_still_compares_and_says_so(tmp_path: Path):
    path = _write(tmp_path / "old.jsonl", _rows(None, 150, 1))
    window = read_window(path)
    assert len(window) == 150 and window.versions == ()
    result = compare(_reference(), window)
    assert len(result.checks) == 4
    assert any("record no head version" in note for note in result.notes), result.notes
    with pytest.raises(DriftError, match=r"old.jsonl records no head version .* drop `version`"):
        read_window(path, version="3")


def test_the_rolling_window_keeps_the_last_crops_per_head_and_counts_errors():
    info = _info()
    window = RollingWindow(capacity=100)
    probs, scores = _answers(250, 6)
    for start in range(0, 250, 50):
        window.observe_batch(info, decide(info, probs[start:start + 50], ood_scores=scores[start:start + 50]), 0.01)
    window.observe_error("h", TimeoutError("late"))
    snapshot = window.window("h")
    last = decide(info, probs[150:], ood_scores=scores[150:])
    assert snapshot.labels == tuple(p.label for p in last) and snapshot.skipped == 1
    assert snapshot.ood_scores is not None and np.allclose(snapshot.ood_scores, scores[150:])
    assert snapshot.versions == ("3",) and window.heads() == ("h",)
    with pytest.raises(DriftError, match=r"no crops of head 'other' \(heads seen: h\)"):
        window.window("other")


def test_a_rolling_window_across_a_hot_swap_is_refused_unless_a_version_is_picked():
    from dataclasses import replace

    old, new = _info(), replace(_info(), version="4")
    window = RollingWindow(capacity=100)
    probs, scores = _answers(60, 6)
    window.observe_batch(old, decide(old, probs[:20], ood_scores=scores[:20]), 0.01)
    window.observe_batch(new, decide(new, probs[20:], ood_scores=scores[20:]), 0.01)
    with pytest.raises(DriftError, match=r"spans versions 3, 4 \(a hot swap\); pass version="):
        window.window("h")
    assert len(window.window("h", version="4")) == 40 and window.window("h", version="4").versions == ("4",)
    with pytest.raises(DriftError, match="no crops of head 'h' version '5'"):
        window.window("h", version="5")


def test_the_rolling_window_is_safe_to_fill_from_many_threads():
    info = _info()
    window = RollingWindow(capacity=5000)
    probs, scores = _answers(40, 8)
    batch = decide(info, probs, ood_scores=scores)

    def fill() -> None:
        for _ in range(25):
            window.observe_batch(info, batch, 0.0)

    threads = [threading.Thread(target=fill) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = window.window("h")
    assert len(snapshot) == 4000
    assert snapshot.labels[:40] == tuple(p.label for p in batch)  # batches are appended whole, never interleaved


def test_bad_inputs_are_typed_errors_that_name_the_value():
    reference = _reference()
    probs, scores = _answers(300, 9)
    with pytest.raises(DriftError, match="holds no decided crops"):
        compare(reference, ServedWindow(labels=(), confidence=np.array([]), skipped=4, source="empty.jsonl"))
    with pytest.raises(DriftError, match="holds 50 decided crops, fewer than min_window=100"):
        compare(reference, _window(probs[:50], scores[:50]))
    wrong = ServedWindow(labels=("cat",) * 299 + ("zebra",), confidence=np.full(300, 0.9), ood_scores=scores,
                         source="other-head.jsonl")
    with pytest.raises(DriftError, match=r"other-head.jsonl has labels 'zebra' that are not classes"):
        compare(reference, wrong)
    with pytest.raises(DriftError, match="carries no OOD scores but the reference has them"):
        compare(reference, _window(probs, None))
    with pytest.raises(DriftError, match=r"shape \(300, 5\) do not fit 3 classes"):
        reference_from_validation(probs, scores, CLASSES[:3])
    with pytest.raises(DriftError, match="299 validation OOD scores for 300"):
        reference_from_validation(probs, scores[:299], CLASSES)
    with pytest.raises(DriftError, match="ks_p_value=1.5"):
        DriftThresholds(ks_p_value=1.5)
    with pytest.raises(DriftError, match="capacity=0"):
        RollingWindow(capacity=0)
    data = reference.to_dict()
    with pytest.raises(DriftError, match="meta.json: format 7 is not 1"):
        DriftReference.from_dict({**data, "format": 7}, origin="meta.json")
    del data["class_counts"]
    with pytest.raises(DriftError, match="meta.json: malformed drift reference .*class_counts"):
        DriftReference.from_dict(data, origin="meta.json")
    with pytest.raises(DriftError, match="labels, 3 confidences"):
        ServedWindow(labels=("cat",), confidence=np.array([0.1, 0.2, 0.3]))


def test_drift_and_its_report_import_neither_torch_nor_scipy_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys, headserve.drift, headserve.drift_report; "
            "print(','.join(m for m in ('torch', 'scipy', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""  # a client machine runs drift checks; matplotlib loads only to draw


def test_the_drift_report_bins_ood_scores_at_the_client_metrics_buckets_from_zero():
    from headserve.client.metrics import ood_buckets

    edges = ood_edges(0.5, np.array([0.1, 0.7, 3.0]))
    assert edges == (0.0, *ood_buckets(0.5))
    assert edges[1:] == (0.125, 0.25, 0.375, 0.45, 0.5, 0.55, 0.625, 0.75, 1.0, 2.0)
