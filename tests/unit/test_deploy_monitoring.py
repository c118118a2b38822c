"""deploy/monitoring: the dashboard and alerts read only metrics that exist, with labels that exist.

Metric names come from the real sources: the decision metrics from a ``DecisionMetrics`` registry after a
real batch, Triton's from a real tritonserver's /metrics (an integration test below), plus the GPU
metrics a CPU-only server cannot show, as Triton's metrics documentation names them. Rendering and
Kubernetes validation of the overlay are in test_deploy_manifests.py (``overlays/monitoring`` is one of
its overlays).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.waiting import CALL_TIMEOUT_S

from headserve.client import HeadInfo, decide
from headserve.client.errors import BadInputError
from headserve.client.metrics import DecisionMetrics, MetricsConfig
from headserve.contract import EncoderIdentity, ServedHead
from headserve.encoders import get_encoder

ROOT = Path(__file__).parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "headserve-dashboard.json"
RULES = MONITORING / "prometheusrule.yaml"

# Triton's metrics as the tritonserver of the nvidia-pytriton wheel (2.51) exposes them for a model that
# answered and failed; test_the_triton_metrics_named_here_are_the_ones_a_real_tritonserver_exposes checks it.
TRITON_MODEL_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
})
# Per-GPU metrics (label gpu_uuid), only with --allow-gpu-metrics on a GPU: Triton's metrics documentation.
TRITON_GPU_METRICS = frozenset({"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
                                "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"})
# Labels a query may group or match by: Triton's, the decision metrics', and those Prometheus adds to a target.
LABELS = frozenset({"model", "version", "reason", "gpu_uuid", "head", "class", "type", "le", "pod", "namespace"})
PROMQL_WORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                          "offset", "bool"})


def decision_metric_names() -> set[str]:
    """Every sample name a DecisionMetrics exposes once it has seen a batch of a head with OOD scores."""
    served = ServedHead(name="h", classes=("a", "b"), encoder=EncoderIdentity.from_spec(get_encoder("clip:tiny")),
                        ood_threshold=1.0)
    info = HeadInfo(served, max_batch_size=4, outputs=("probs", "ood_score"), version="1")
    metrics = DecisionMetrics(config=MetricsConfig(ood_quantiles={"h": 0.95}))
    metrics.observe_batch(info, decide(info, np.array([[0.9, 0.1]]), ood_scores=np.array([0.5])), 0.01)
    metrics.observe_error("h", BadInputError("x"))
    # prometheus-client adds a *_created timestamp beside each counter and histogram: its convention, not a metric
    return {s.name for family in metrics.registry.collect() for s in family.samples if not s.name.endswith("_created")}


def histogram_family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (enough PromQL for the queries in deploy/monitoring)."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings: label values, legend text
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)  # grouping label lists
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?(e[+-]?\d+)?", " ", text)  # numbers, 1e-9 included
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group() not in PROMQL_WORDS:  # not a function or an operator word
            names.add(match.group())
    return names


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r'"[^"]*"', '""', expr)):
        labels |= {m.split("=")[0].split("!")[0].strip() for m in matchers.split(",") if m.strip()}
    return labels


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def alert_rules() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in doc["spec"]["groups"] for rule in group["rules"] if "alert" in rule}


def test_the_decision_metrics_are_exactly_the_names_of_the_shared_spec():
    families = {histogram_family(n) for n in decision_metric_names()}
    assert families == {
        "headserve_client_decisions_total", "headserve_client_predicted_class_total", "headserve_client_confidence",
        "headserve_client_margin", "headserve_client_ood_score", "headserve_client_request_seconds",
        "headserve_client_errors_total", "headserve_client_ood_threshold", "headserve_client_expected_ood_rate"}


def test_the_promql_reader_finds_metrics_and_ignores_functions_labels_and_numbers():
    expr = ('sum by (head) (rate(x_total{reason="a b"}[5m])) / clamp_min(sum by (head) (rate(y_count[5m])), 1e-9) '
            '> on (head) 2 * max by (head) (z) and histogram_quantile(0.95, w_bucket)')
    assert metric_names(expr) == {"x_total", "y_count", "z", "w_bucket"}
    assert grouping_labels(expr) == {"head", "reason"}


def test_the_dashboard_parses_and_every_query_reads_a_triton_or_a_decision_metric():
    allowed = TRITON_MODEL_METRICS | TRITON_GPU_METRICS | decision_metric_names()
    queries = dashboard_queries()
    assert len(queries) >= 15
    unknown = {(title, name) for title, expr in queries for name in metric_names(expr) if name not in allowed}
    assert unknown == set()
    bad_labels = {(title, label) for title, expr in queries for label in grouping_labels(expr) if label not in LABELS}
    assert bad_labels == set()
    read = {histogram_family(n) for _, expr in queries for n in metric_names(expr)}
    # what the issue asks to see: Triton's requests, queue, compute, failures, GPU; the heads' decisions
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_request_failure", "nv_gpu_utilization", "headserve_client_decisions_total",
            "headserve_client_expected_ood_rate", "headserve_client_confidence", "headserve_client_errors_total"} <= read


def test_the_dashboard_variables_and_panels_are_complete():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "model", "head"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    heatmaps = [p for p in board["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" and "_bucket" in t["expr"] for p in heatmaps for t in p["targets"])


def test_every_alert_reads_real_metrics_and_explains_its_threshold():
    rules = alert_rules()
    assert set(rules) == {"HeadserveOODRateAboveExpected", "HeadserveAcceptedShareFalling", "HeadserveQueueTimeRising",
                          "HeadserveTritonErrorRatio", "HeadserveClientErrorRatio"}
    allowed = TRITON_MODEL_METRICS | TRITON_GPU_METRICS | decision_metric_names()
    for name, rule in rules.items():
        assert metric_names(rule["expr"]) <= allowed, name
        assert grouping_labels(rule["expr"]) <= LABELS, name
        assert len(rule["annotations"]["description"]) > 200, name  # the why, not only the what
    assert "200 crops" in rules["HeadserveOODRateAboveExpected"]["annotations"]["description"]
    assert "> 0.01" in rules["HeadserveTritonErrorRatio"]["expr"]
    assert "1%" in rules["HeadserveTritonErrorRatio"]["annotations"]["description"]


def test_the_queue_time_alert_fires_above_the_autoscalers_target_it_explains():
    autoscaling = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "autoscaling.yaml").read_text()))
    (hpa,) = [d for d in autoscaling if d["kind"] == "HorizontalPodAutoscaler"]
    target_us = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    rule = alert_rules()["HeadserveQueueTimeRising"]
    threshold_us = float(re.search(r">\s*(\d+)\s*$", rule["expr"].strip()).group(1))  # type: ignore[union-attr]
    assert threshold_us > target_us
    description = rule["annotations"]["description"]
    assert f"{threshold_us / 1000:g} ms" in description and f"{target_us / 1000:g} ms" in description


@pytest.mark.integration
def test_the_triton_metrics_named_here_are_the_ones_a_real_tritonserver_exposes(tmp_path: Path):
    """A real tritonserver answers one request and refuses one; its /metrics names every model metric we read."""
    from tritonclient import http
    from tritonclient.utils import InferenceServerException

    from headserve.server import LocalTriton, ServerConfig

    model = tmp_path / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 8\ndynamic_batching {}\n'
        'input [{name: "x", data_type: TYPE_FP32, dims: [1]}]\noutput [{name: "y", data_type: TYPE_FP32, dims: [1]}]\n')
    (model / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb\n\n\nclass TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        '        return [pb.InferenceResponse([pb.Tensor("y", pb.get_input_tensor_by_name(r, "x").as_numpy())])\n'
        "                for r in requests]\n")
    with LocalTriton(ServerConfig(repository=tmp_path)) as server:
        client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=CALL_TIMEOUT_S)
        good = http.InferInput("x", [2, 1], "FP32")
        good.set_data_from_numpy(np.ones((2, 1), np.float32))
        client.infer("echo", [good])
        with pytest.raises(InferenceServerException):  # a tensor of the wrong shape: counted as a failure by Triton
            client.infer("echo", [http.InferInput("x", [2, 3], "FP32")])
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    exposed = set(re.findall(r"^(nv_\w+)\{", text, re.MULTILINE))
    assert TRITON_MODEL_METRICS <= exposed, TRITON_MODEL_METRICS - exposed
    labels = set(re.findall(r"^nv_inference_request_failure\{([^}]*)\}", text, re.MULTILINE)[0].replace('"', "").split(","))
    assert {label.split("=")[0] for label in labels} == {"model", "reason", "version"}
    read = {n for _, expr in dashboard_queries() for n in metric_names(expr)} | {
        n for rule in alert_rules().values() for n in metric_names(rule["expr"])}
    assert {n for n in read if n.startswith("nv_")} - TRITON_GPU_METRICS <= exposed
