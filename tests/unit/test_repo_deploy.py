"""The Kubernetes manifests parse and agree with each other and with the exporter's production configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from headserve.export.model_config import TensorRTOptions

DEPLOY = Path(__file__).parents[2] / "deploy" / "kubernetes"


def documents() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


def test_every_manifest_parses_and_kustomize_lists_every_file():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml")
                                                         if p.name != "kustomization.yaml")
    assert {d["kind"] for d in documents()} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
                                                 "PersistentVolumeClaim", "ServiceMonitor"}


def test_triton_runs_the_official_container_on_a_gpu_with_health_probes():
    (deployment,) = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_the_model_repository_and_tensorrt_cache_volumes_are_where_the_configs_expect_them():
    (deployment,) = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert f"--model-repository={mounts['model-repository']}" in container["args"]
    assert mounts["trt-cache"] == TensorRTOptions().cache_dir
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert set(claims.values()) <= {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}


def test_the_autoscaler_reads_the_queue_time_metric_that_prometheus_adapter_derives():
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (deployment,) = by_kind("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    (adapter,) = by_kind("ConfigMap")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"] and "nv_inference_queue_duration_us" in rule["metricsQuery"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    (monitor,) = by_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and ports["metrics"] == 8002


CONTAINER = DEPLOY.parent / "container" / "Dockerfile"


def test_the_encoded_overlay_runs_the_official_image_plus_pillow_and_nothing_else():
    import re

    import tomllib
    from packaging.requirements import Requirement

    (deployment,) = by_kind("Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    name, tag = image.rsplit(":", 1)
    overlay = yaml.safe_load((DEPLOY.parent / "overlays" / "encoded" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../kubernetes"]
    assert set(overlay) == {"apiVersion", "kind", "resources", "images"}
    (swap,) = overlay["images"]
    assert swap["name"] == name and swap["newTag"] == tag  # same Triton release, only the image swapped
    dockerfile = CONTAINER.read_text()
    assert re.search(r"^ARG TRITON_IMAGE=(\S+)$", dockerfile, re.M).group(1) == image
    pinned = re.search(r'"pillow==([\w.]+)"', dockerfile).group(1)
    project = tomllib.loads((DEPLOY.parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    (pillow,) = [Requirement(r) for r in project if Requirement(r).name == "pillow"]
    assert pillow.specifier.contains(pinned), (pinned, str(pillow.specifier))
