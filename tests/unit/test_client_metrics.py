"""Decision metrics: what the client decided, counted per head and version, read back from the registry and
over HTTP from the real exporter endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from headserve.client import BadInputError, DeadlineExceededError, HeadInfo, Reason, decide
from headserve.client.errors import ClientConfigError, MetricsPortError
from headserve.client.metrics import (
    OOD_FIXED_BUCKETS,
    OTHER_CLASS,
    DecisionMetrics,
    MetricsConfig,
    enable_metrics,
    ood_buckets,
)
from headserve.client.observer import Observer
from headserve.contract import EncoderIdentity, ServedHead
from headserve.encoders import get_encoder


def _info(name: str = "h", version: str = "1", ood: float | None = 0.5, classes: tuple[str, ...] = ()) -> HeadInfo:
    served = ServedHead(name=name, classes=classes or ("cat", "dog", "fox", "background"), background_indices=(3,),
                        encoder=EncoderIdentity.from_spec(get_encoder("clip:tiny")), ood_threshold=ood)
    return HeadInfo(served, max_batch_size=8, outputs=("probs", "ood_score"), version=version)


PROBS = np.array([
    [0.90, 0.05, 0.03, 0.02],  # accepted cat, confidence 0.9, margin 0.85
    [0.10, 0.05, 0.05, 0.80],  # background
    [0.40, 0.30, 0.20, 0.10],  # low confidence
    [0.52, 0.46, 0.01, 0.01],  # ambiguous
    [0.95, 0.03, 0.01, 0.01],  # out of distribution (score 0.9 > 0.5)
], dtype=np.float64)
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.9])


def _value(metrics: DecisionMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_decision_metrics_is_an_observer_the_clients_can_take():
    metrics = DecisionMetrics()
    observer: Observer = metrics  # mypy checks the protocol; the calls below check it at run time
    observer.observe_batch(_info(), decide(_info(), PROBS, ood_scores=SCORES), 0.01)
    observer.observe_error("h", BadInputError("x"))
    assert _value(metrics, "headserve_client_decisions_total", head="h", version="1", reason="accepted") == 1
    assert _value(metrics, "headserve_client_errors_total", head="h", type="BadInputError") == 1
    assert metrics.failures == 0


def test_a_batch_is_counted_by_reason_class_and_histogram_as_the_client_decided_it():
    info = _info()
    preds = decide(info, PROBS, ood_scores=SCORES)
    metrics = DecisionMetrics()
    metrics.observe_batch(info, preds, 0.02)
    metrics.observe_batch(info, preds[:1], 0.5)
    want = {r.value: sum(p.reason is r for p in preds + preds[:1]) for r in Reason}
    got = {r.value: _value(metrics, "headserve_client_decisions_total", head="h", version="1", reason=r.value) or 0
           for r in Reason}
    assert got == want == {"accepted": 2, "background": 1, "low_confidence": 1, "ambiguous": 1,
                           "out_of_distribution": 1}
    assert _value(metrics, "headserve_client_predicted_class_total", head="h", version="1", **{"class": "cat"}) == 5
    assert _value(metrics, "headserve_client_predicted_class_total", head="h", version="1",
                  **{"class": "background"}) == 1
    conf = [p.confidence for p in preds + preds[:1]]
    assert _value(metrics, "headserve_client_confidence_count", head="h", version="1") == 6
    assert _value(metrics, "headserve_client_confidence_sum", head="h", version="1") == pytest.approx(sum(conf))
    # le is "less than or equal": 0.4 falls in the 0.4 bucket, 0.52 does not reach 0.5
    assert _value(metrics, "headserve_client_confidence_bucket", head="h", version="1", le="0.4") == 1
    assert _value(metrics, "headserve_client_confidence_bucket", head="h", version="1", le="0.5") == 1
    assert _value(metrics, "headserve_client_confidence_bucket", head="h", version="1", le="0.55") == 2
    assert _value(metrics, "headserve_client_confidence_bucket", head="h", version="1", le="+Inf") == 6
    margins = sorted(p.margin for p in preds)
    assert _value(metrics, "headserve_client_margin_bucket", head="h", version="1", le="0.1") == \
        sum(m <= 0.1 for m in margins + [preds[0].margin]) == 1
    assert _value(metrics, "headserve_client_request_seconds_count", head="h", version="1") == 2
    assert _value(metrics, "headserve_client_request_seconds_sum", head="h", version="1") == pytest.approx(0.52)


def test_ood_scores_fall_into_buckets_set_by_the_heads_threshold_and_the_gauges_publish_it():
    info = _info(ood=0.5)
    metrics = DecisionMetrics(config=MetricsConfig(ood_quantiles={"h": 0.95}))
    metrics.observe_batch(info, decide(info, PROBS, ood_scores=SCORES), 0.01)
    assert ood_buckets(0.5) == (0.125, 0.25, 0.375, 0.45, 0.5, 0.55, 0.625, 0.75, 1.0, 2.0)
    assert _value(metrics, "headserve_client_ood_score_bucket", head="h", version="1", le="0.5") == 4
    assert _value(metrics, "headserve_client_ood_score_bucket", head="h", version="1", le="0.75") == 4
    assert _value(metrics, "headserve_client_ood_score_bucket", head="h", version="1", le="1.0") == 5
    assert _value(metrics, "headserve_client_ood_threshold", head="h", version="1") == 0.5
    assert _value(metrics, "headserve_client_expected_ood_rate", head="h", version="1") == pytest.approx(0.05)
    # a head without a threshold gets the fixed buckets and no gauges; a head without scores, no histogram
    bare = _info(name="bare", ood=None)
    metrics.observe_batch(bare, decide(bare, PROBS, ood_scores=SCORES * 100), 0.01)
    assert ood_buckets(None) == OOD_FIXED_BUCKETS
    assert _value(metrics, "headserve_client_ood_score_bucket", head="bare", version="1", le="64.0") == 4
    assert _value(metrics, "headserve_client_ood_threshold", head="bare", version="1") is None
    plain = _info(name="plain", ood=None)
    metrics.observe_batch(plain, decide(plain, PROBS), 0.01)
    assert _value(metrics, "headserve_client_ood_score_count", head="plain", version="1") is None
    assert _value(metrics, "headserve_client_confidence_count", head="plain", version="1") == 5


def test_class_labels_are_bounded_per_head_and_the_rest_count_as_other():
    classes = tuple(f"c{i}" for i in range(6))
    info = _info(classes=classes, ood=None)
    metrics = DecisionMetrics(config=MetricsConfig(max_class_labels=3))
    probs = np.eye(6) * 0.9 + 0.02  # crop i is class c{i}
    metrics.observe_batch(info, decide(info, probs), 0.01)
    metrics.observe_batch(info, decide(info, probs[[0, 5]]), 0.01)
    exposed = {s.labels["class"]: s.value for f in metrics.registry.collect()
               if f.name == "headserve_client_predicted_class" for s in f.samples if s.name.endswith("_total")}
    assert exposed == {"c0": 2, "c1": 1, "c2": 1, OTHER_CLASS: 4}
    # the bound is per head: another head has its own first three
    other = _info(name="other", classes=classes, ood=None)
    metrics.observe_batch(other, decide(other, probs[[5]]), 0.01)
    assert _value(metrics, "headserve_client_predicted_class_total", head="other", version="1",
                  **{"class": "c5"}) == 1


def test_versions_are_separate_series_and_errors_count_by_type():
    metrics = DecisionMetrics()
    for version in ("1", "2"):
        info = _info(version=version)
        metrics.observe_batch(info, decide(info, PROBS[:1], ood_scores=SCORES[:1]), 0.01)
    assert _value(metrics, "headserve_client_decisions_total", head="h", version="2", reason="accepted") == 1
    assert _value(metrics, "headserve_client_decisions_total", head="h", version="1", reason="accepted") == 1
    metrics.observe_error("h", DeadlineExceededError("slow"))
    metrics.observe_error("h", DeadlineExceededError("slow"))
    metrics.observe_error("h", BadInputError("bad crop"))
    assert _value(metrics, "headserve_client_errors_total", head="h", type="DeadlineExceededError") == 2
    assert _value(metrics, "headserve_client_errors_total", head="h", type="BadInputError") == 1


def test_two_metrics_in_one_process_do_not_collide_and_a_caller_may_share_a_registry():
    a, b = DecisionMetrics(), DecisionMetrics()
    a.observe_batch(_info(), decide(_info(), PROBS[:1]), 0.01)
    assert _value(a, "headserve_client_decisions_total", head="h", version="1", reason="accepted") == 1
    assert _value(b, "headserve_client_decisions_total", head="h", version="1", reason="accepted") is None
    registry = CollectorRegistry()
    shared = DecisionMetrics(registry=registry)
    assert shared.registry is registry
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # prometheus-client refuses the second
        DecisionMetrics(registry=registry)


def test_the_exposition_has_no_created_series_and_other_metrics_in_the_process_keep_theirs():
    from prometheus_client import Counter, generate_latest

    metrics = DecisionMetrics()
    info = _info()
    metrics.observe_batch(info, decide(info, PROBS, ood_scores=SCORES), 0.02)
    metrics.observe_error("h", BadInputError("x"))
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["headserve_client_decisions"].samples) == 5  # one series per reason decided, no twin
    assert len(families["headserve_client_errors"].samples) == 1
    assert {s.name for s in families["headserve_client_request_seconds"].samples} == {
        "headserve_client_request_seconds_bucket", "headserve_client_request_seconds_count",
        "headserve_client_request_seconds_sum"}
    other = CollectorRegistry()  # another library's metrics in the same process: prometheus-client's default
    Counter("other_total", "Not headserve's.", registry=other).inc()
    assert "other_created" in generate_latest(other).decode()


def test_a_failure_inside_the_metrics_is_logged_and_never_reaches_the_client(caplog):
    metrics = DecisionMetrics()
    broken = decide(_info(), PROBS[:1])
    broken_batch = [broken[0], object()]  # not a Prediction: reading its fields fails inside the observer
    metrics.observe_batch(_info(), broken_batch, 0.01)  # type: ignore[list-item]
    assert "could not record a batch of head 'h'" in caplog.text
    assert metrics.failures == 1
    metrics.observe_batch(_info(), broken[:1], 0.01)  # the next good batch is counted as usual
    assert _value(metrics, "headserve_client_decisions_total", head="h", version="1", reason="accepted") == 1
    assert metrics.failures == 1


def test_a_defect_inside_the_metrics_raises_instead_of_being_logged(monkeypatch):
    metrics = DecisionMetrics()

    def defect(*args: object) -> None:
        raise KeyError("a defect")  # injected: no real input makes the recording code raise a KeyError

    monkeypatch.setattr(metrics, "_observe_batch", defect)
    with pytest.raises(KeyError, match="a defect"):
        metrics.observe_batch(_info(), decide(_info(), PROBS[:1]), 0.01)
    assert metrics.failures == 0


def test_bad_config_names_the_value():
    with pytest.raises(ClientConfigError, match="max_class_labels=0") as raised:
        MetricsConfig(max_class_labels=0)
    assert raised.value.setting == "max_class_labels"
    with pytest.raises(ClientConfigError, match=r"ood_quantiles\['h'\]=1.5"):
        MetricsConfig(ood_quantiles={"h": 1.5})


def test_the_exporter_endpoint_serves_the_metrics_over_http():
    metrics = enable_metrics(port=0, addr="127.0.0.1")
    try:
        info = _info()
        metrics.observe_batch(info, decide(info, PROBS, ood_scores=SCORES), 0.01)
        assert metrics.port
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("headserve_client_decisions_total",
                    (("head", "h"), ("reason", "out_of_distribution"), ("version", "1")))] == 1
    assert samples[("headserve_client_ood_score_bucket", (("head", "h"), ("le", "+Inf"), ("version", "1")))] == 5
    assert ("headserve_client_confidence_bucket", (("head", "h"), ("le", "0.05"), ("version", "1"))) in samples
    assert "_created" not in text  # what Prometheus scrapes holds no timestamp twin of each series


def test_a_taken_port_is_a_typed_error_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"127.0.0.1:{port}"):
            enable_metrics(port=port, addr="127.0.0.1")


def test_the_client_without_metrics_does_not_import_prometheus_client():
    code = ("import sys, headserve.client, headserve.client.observer; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
