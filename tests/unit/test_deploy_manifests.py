"""Every deployment under deploy/ renders, is valid Kubernetes, and agrees with what headserve writes and runs.

Each overlay is rendered through `kubectl kustomize` when the binary is present, else through the small
renderer in tests/support/kustomize.py, which reads the same kustomization files (resources, patches, images, namespace: what
they use, and a loud failure on anything else). When kubectl is present the two are also compared, so
the renderer stays faithful. Every rendered manifest is validated with kubernetes-validate in strict
mode (unknown fields are errors) against Kubernetes 1.30, the oldest release this deployment supports,
and the newest schema the validator ships; its schemas come with the package, so no network is needed.
Custom resources have no schema there: their required fields are checked by the checkers below.
"""

from __future__ import annotations

import re
import shlex
from typing import Callable

import kubernetes_validate
import pytest
import yaml
from support.kustomize import DEPLOY, KUBECTL, ROOT, identity, normalised, render_kubectl, render_python, rendered

from headserve.fsutil import DIR_MODE, FILE_MODE
from headserve.triton_flags import FLEET, KSERVE

BASE = "kubernetes"
OVERLAYS = ("kubernetes", "overlays/gpu", "overlays/cpu", "overlays/encoded", "overlays/kserve", "overlays/monitoring")
TRITON_OVERLAYS = ("kubernetes", "overlays/gpu", "overlays/cpu", "overlays/encoded",
                   "overlays/monitoring")  # the Deployment-based ones
# applied with `kubectl apply -f`, not kustomize
PLAIN_MANIFESTS = ("exporter/exporter.yaml", "ray/storage.yaml", "ray/rayjob.yaml")
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KSERVE_MOUNT = "/mnt/models"  # where KServe mounts an InferenceService's storageUri volume


# ---------------------------------------------------------------------------------------------
# Helpers over rendered documents.


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def triton_container(docs: list[dict]) -> dict:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def plain(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / path).read_text()) if d]


# ---------------------------------------------------------------------------------------------
# Custom resources: the fields their controllers refuse to work without.

def check_service_monitor(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    problems = [] if spec.get("selector", {}).get("matchLabels") else ["spec.selector.matchLabels is missing"]
    if not spec.get("endpoints"):
        problems.append("spec.endpoints is empty")
    problems += [f"endpoint {e} has no port" for e in spec.get("endpoints", []) if "port" not in e]
    return problems


def check_inference_service(doc: dict) -> list[str]:
    predictor = doc.get("spec", {}).get("predictor", {})
    model = predictor.get("model", {})
    problems = [f"spec.predictor.model.{f} is missing" for f in ("modelFormat", "storageUri", "runtime")
                if f not in model]
    if "name" not in model.get("modelFormat", {}):
        problems.append("spec.predictor.model.modelFormat.name is missing")
    if not str(model.get("storageUri", "")).startswith(("pvc://", "s3://", "gs://")):
        problems.append(f"storageUri {model.get('storageUri')!r} has no storage scheme KServe knows")
    return problems


def check_serving_runtime(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    problems = [] if spec.get("supportedModelFormats") else ["spec.supportedModelFormats is empty"]
    containers = spec.get("containers", [])
    if [c.get("name") for c in containers][:1] != ["kserve-container"]:
        problems.append("the first container must be named kserve-container")
    problems += [f"container {c.get('name')} has no image" for c in containers if "image" not in c]
    return problems


def check_adapter_rules(doc: dict) -> list[str]:
    rules = yaml.safe_load(doc["data"]["config.yaml"]).get("rules", [])
    problems = [] if rules else ["no rules"]
    for rule in rules:
        problems += [f"rule lacks {f}" for f in ("seriesQuery", "metricsQuery") if f not in rule]
        if "as" not in rule.get("name", {}):
            problems.append("rule lacks name.as (the metric name the autoscaler reads)")
        if set(rule.get("resources", {}).get("overrides", {})) != {"namespace", "pod"}:
            problems.append("rule must map namespace and pod labels to resources")
    return problems


def check_prometheus_rule(doc: dict) -> list[str]:
    groups = doc.get("spec", {}).get("groups", [])
    problems = [] if groups else ["spec.groups is empty"]
    for group in groups:
        problems += [] if group.get("name") and group.get("rules") else [f"group {group.get('name')} lacks name or rules"]
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            problems += [f"rule {name} has no expr"] if not str(rule.get("expr", "")).strip() else []
            if "alert" in rule:
                problems += [f"alert {name} lacks {f}" for f in ("for", "labels", "annotations") if f not in rule]
                problems += [f"alert {name} lacks annotations.{f}" for f in ("summary", "description")
                             if f not in rule.get("annotations", {})]
                if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                    problems.append(f"alert {name} has no severity warning or critical")
            elif "record" not in rule:
                problems.append("a rule is neither an alert nor a record")
    return problems


def check_pod_monitor(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    problems = [] if spec.get("selector", {}).get("matchLabels") else ["spec.selector.matchLabels is missing"]
    if not spec.get("podMetricsEndpoints"):
        problems.append("spec.podMetricsEndpoints is empty")
    problems += [f"endpoint {e} has no port" for e in spec.get("podMetricsEndpoints", []) if "port" not in e]
    return problems


# KubeRay's RayJob (ray.io/v1), from its published CRD (ray-project/kuberay,
# ray-operator/config/crd/bases/ray.io_rayjobs.yaml at feeaf72fa): the fields each level may hold (an unknown
# one is dropped by the API server's pruning, silently) and the ones it requires. The pod templates inside are
# Kubernetes PodTemplateSpecs: kubernetes-validate checks them in strict mode, as for built-in kinds.
RAYJOB_SPEC_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                      "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy",
                      "metadata", "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML",
                      "shutdownAfterJobFinishes", "submissionMode", "submitterConfig", "submitterPodTemplate",
                      "suspend", "ttlSecondsAfterFinished"}
RAY_HEAD_FIELDS = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
                   "serviceType", "template"}
RAY_HEAD_REQUIRED = ("template",)
RAY_WORKER_FIELDS = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                     "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
RAY_WORKER_REQUIRED = ("groupName", "maxReplicas", "minReplicas", "template")


def _unknown(where: str, found: dict, allowed: set[str]) -> list[str]:
    return [f"{where}.{k} is not a field of the CRD" for k in sorted(set(found) - allowed)]


def _pod_template(where: str, template: dict) -> list[str]:
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}.template, Kubernetes {version}: {exc.message} at "
                            f"{'/'.join(map(str, list(exc.path)[1:]))}")
    return problems


def check_ray_job(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    problems = _unknown("spec", spec, RAYJOB_SPEC_FIELDS)
    if not str(spec.get("entrypoint", "")).strip():  # the controller has nothing to submit (outside interactive mode)
        problems.append("spec.entrypoint is missing")
    cluster = spec.get("rayClusterSpec")
    if cluster is None:
        return problems + ["spec.rayClusterSpec is missing (and no clusterSelector names a running cluster)"]
    head = cluster.get("headGroupSpec")
    if head is None:
        return problems + ["spec.rayClusterSpec.headGroupSpec is missing"]
    problems += _unknown("headGroupSpec", head, RAY_HEAD_FIELDS)
    problems += [f"headGroupSpec.{f} is missing" for f in RAY_HEAD_REQUIRED if f not in head]
    problems += _pod_template("headGroupSpec", head.get("template", {}))
    for group in cluster.get("workerGroupSpecs", []):
        where = f"workerGroupSpecs[{group.get('groupName')}]"
        problems += _unknown(where, group, RAY_WORKER_FIELDS)
        problems += [f"{where}.{f} is missing" for f in RAY_WORKER_REQUIRED if f not in group]
        problems += _pod_template(where, group.get("template", {}))
        if not group.get("minReplicas", 0) <= group.get("replicas", group.get("minReplicas", 0)) \
                <= group.get("maxReplicas", 0):
            problems.append(f"{where}: replicas is outside [minReplicas, maxReplicas]")
    return problems


CUSTOM: dict[tuple[str, str], Callable[[dict], list[str]]] = {
    ("ray.io/v1", "RayJob"): check_ray_job,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
    ("monitoring.coreos.com/v1", "PodMonitor"): check_pod_monitor,
    ("serving.kserve.io/v1beta1", "InferenceService"): check_inference_service,
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): check_serving_runtime,
}
ADAPTER_CONFIG = re.compile(r"^prometheus-adapter-")  # ConfigMaps holding prometheus-adapter rules


def problems_of(doc: dict) -> list[str]:
    """Schema problems for built-in kinds, required-field problems for custom ones."""
    checker = CUSTOM.get((doc["apiVersion"], doc["kind"]))
    if checker is not None:
        return checker(doc)
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"Kubernetes {version}: {exc.message} at {'/'.join(map(str, exc.path))}")
    if doc["kind"] == "ConfigMap" and ADAPTER_CONFIG.match(doc["metadata"]["name"]):
        problems += check_adapter_rules(doc)
    return problems


# ---------------------------------------------------------------------------------------------
# Rendering and validation.


def test_the_python_renderer_gives_what_kubectl_kustomize_gives_for_every_overlay():
    for overlay in OVERLAYS:
        python = render_python(DEPLOY / overlay)
        assert len({identity(d) for d in python}) == len(python), overlay  # no resource twice
        if KUBECTL:  # the reference: without it, the renderer is still exercised by every test below
            assert normalised(sorted(python, key=identity)) == normalised(
                sorted(render_kubectl(DEPLOY / overlay), key=identity)), overlay


@pytest.mark.parametrize("source", OVERLAYS + PLAIN_MANIFESTS)
def test_every_manifest_is_valid_kubernetes_in_strict_mode_and_custom_resources_have_their_fields(source):
    docs = plain(source) if source.endswith(".yaml") else rendered(source)
    assert docs
    found = {f"{d['kind']}/{d['metadata']['name']}": problems_of(d) for d in docs}
    assert {name: p for name, p in found.items() if p} == {}


def test_the_validator_runs_in_strict_mode_offline_and_refuses_a_misspelt_field():
    broken = rendered(BASE)
    deployment = one(broken, "Deployment")
    triton_container(broken)["securityContext"]["readOnlyRootFileSystem"] = True  # capital S: not a field
    assert any("readOnlyRootFileSystem" in p for p in problems_of(deployment))
    monitor = one(broken, "ServiceMonitor")
    del monitor["spec"]["endpoints"]
    assert problems_of(monitor) == ["spec.endpoints is empty"]
    isvc = one(rendered("overlays/kserve"), "InferenceService")
    del isvc["spec"]["predictor"]["model"]["storageUri"]
    assert "spec.predictor.model.storageUri is missing" in problems_of(isvc)
    adapter = one(broken, "ConfigMap")
    adapter["data"]["config.yaml"] = "rules: [{seriesQuery: x, metricsQuery: y, name: {matches: z}}]"
    assert problems_of(adapter) == ["rule lacks name.as (the metric name the autoscaler reads)",
                                    "rule must map namespace and pod labels to resources"]


def test_the_shared_flags_refuse_a_model_control_mode_triton_does_not_have():
    from headserve.errors import ConfigError
    from headserve.triton_flags import TritonFlags

    with pytest.raises(ConfigError, match="'pull' is not one of"):
        TritonFlags(repository="/models", model_control="pull")
    assert "--repository-poll-secs=7" in TritonFlags("/models", model_control="poll", poll_secs=7).args()
    assert "--load-model=*" not in TritonFlags("/models", model_control="poll").args()


def test_a_kind_with_neither_a_schema_nor_a_checker_fails_instead_of_passing_unchecked():
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        problems_of(unknown)
    kinds = {(d["apiVersion"], d["kind"]) for o in OVERLAYS for d in rendered(o)}
    kinds |= {(d["apiVersion"], d["kind"]) for p in PLAIN_MANIFESTS for d in plain(p)}
    assert set(CUSTOM) <= kinds  # every checker has something to check


# ---------------------------------------------------------------------------------------------
# Agreement with headserve: flags, ports, repository path, model names.


@pytest.mark.parametrize("overlay", TRITON_OVERLAYS)
def test_the_fleet_runs_tritonserver_with_the_flags_the_local_server_shares(overlay):
    assert triton_container(rendered(overlay))["args"] == ["tritonserver", *FLEET.args()]


def test_kserve_runs_tritonserver_with_the_same_flags_at_its_own_mount_and_ports():
    runtime = one(rendered("overlays/kserve"), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["args"] == ["tritonserver", *KSERVE.args()]
    differs = {k for k in vars(FLEET) if getattr(FLEET, k) != getattr(KSERVE, k)}
    assert differs == {"repository", "grpc_port", "http_port"}  # model control, readiness, drain: the same
    assert KSERVE.repository == KSERVE_MOUNT


def test_the_local_server_builds_its_command_from_the_same_flags(tmp_path):
    from headserve.server import LocalTriton, ServerConfig

    server = LocalTriton(ServerConfig(repository=tmp_path, model_control="explicit"))
    args = server.command()[1:]
    fleet = [a for a in FLEET.args() if not a.startswith(("--model-repository", "--grpc-port", "--http-port",
                                                           "--metrics-port", "--exit-timeout", "--allow-gpu"))]
    assert [a for a in args if a in fleet] == fleet  # same model control, load-all, readiness, in order
    assert f"--model-repository={tmp_path.resolve()}" in args and "--grpc-address=127.0.0.1" in args


@pytest.mark.parametrize("overlay", TRITON_OVERLAYS)
def test_ports_agree_across_container_services_probes_policy_and_the_client(overlay):
    import argparse

    from headserve.app.classify import register  # the client's default --url names the gRPC port

    docs = rendered(overlay)
    container = triton_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": FLEET.http_port, "grpc": FLEET.grpc_port, "metrics": FLEET.metrics_port}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    grpc_service = services["headserve-triton-grpc"]
    assert grpc_service["spec"]["clusterIP"] == "None"  # headless: one address per pod
    assert [(p["port"], p["targetPort"]) for p in grpc_service["spec"]["ports"]] == [(FLEET.grpc_port, "grpc")]
    http_service = services["headserve-triton"]
    assert {p["targetPort"] for p in http_service["spec"]["ports"]} == {"http", "metrics"}  # no gRPC pinning
    for svc in services.values():
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= http_service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    policy = one(docs, "NetworkPolicy")
    rules = {tuple(sorted(p["port"] for p in rule["ports"])): rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {tuple(sorted((FLEET.grpc_port, FLEET.http_port))), (FLEET.metrics_port,)}
    assert rules[(FLEET.metrics_port,)] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    inference_from = rules[tuple(sorted((FLEET.grpc_port, FLEET.http_port)))]
    assert {"namespaceSelector": {"matchLabels": {"headserve.io/client": "true"}}} in inference_from
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    for argv in (["classify", "--head", "h", "crop.png"], ["gate", "--head", "h", "--target", "t", "crop.png"]):
        assert parser.parse_args(argv).url.rpartition(":")[2] == str(FLEET.grpc_port), argv


def test_kserve_ports_policy_and_metrics_annotation_agree_with_its_flags():
    docs = rendered("overlays/kserve")
    runtime = one(docs, "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [KSERVE.grpc_port]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(KSERVE.metrics_port)
    isvc = one(docs, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats
    policy = one(docs, "NetworkPolicy")
    ports = sorted(p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert ports == sorted((KSERVE.grpc_port, KSERVE.http_port, KSERVE.metrics_port))
    selector = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_every_server_reads_the_one_repository_claim_at_the_path_its_flags_name():
    from headserve.export.model_config import TensorRTOptions

    base = rendered(BASE)
    claim = one(base, "PersistentVolumeClaim", "headserve-model-repository")
    spec = one(base, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in triton_container(base)["volumeMounts"]}
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mounts["model-repository"]["mountPath"] == FLEET.repository and mounts["model-repository"]["readOnly"]
    # The exporter's default TensorRT cache directory is the volume mounted for it.
    assert mounts["trt-cache"]["mountPath"] == TensorRTOptions().cache_dir
    kserve = rendered("overlays/kserve")
    isvc = one(kserve, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"pvc://{claim['metadata']['name']}/"
    kserve_claim = one(kserve, "PersistentVolumeClaim")
    assert (kserve_claim["metadata"], kserve_claim["spec"]) == (claim["metadata"], claim["spec"])
    exporter = one(plain("exporter/exporter.yaml"), "Pod")
    exporter_mounts = {m["name"]: m["mountPath"] for m in exporter["spec"]["containers"][0]["volumeMounts"]}
    exporter_claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in exporter["spec"]["volumes"]
                       if "persistentVolumeClaim" in v}
    assert exporter_claims == {"model-repository": claim["metadata"]["name"]}
    assert f"--repo {exporter_mounts['model-repository']}" in (DEPLOY / "exporter" / "exporter.yaml").read_text()


def test_model_names_in_the_deploy_guide_are_ones_headserve_writes():
    """The guide's commands name models of the example repository (model_repository/, the generator's output)."""
    guide = (DEPLOY / "README.md").read_text()
    named = set(re.findall(r"--head (\w+)", guide)) | set(re.findall(r"/v2/models/(\w+)", guide))
    written = {p.name for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()}
    assert named and named <= written, named - written


def test_the_guide_rolls_out_through_the_headless_service_the_manifests_declare():
    docs = rendered(BASE)
    service = one(docs, "Service", "headserve-triton-grpc")
    address = (f"dns:///{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
               f"{service['spec']['ports'][0]['port']}")
    guide = (DEPLOY / "README.md").read_text()
    assert f"--server {address}" in guide
    assert address in (DEPLOY / "exporter" / "exporter.yaml").read_text()
    for overlay in OVERLAYS[1:]:
        assert f"deploy/{overlay}" in guide, overlay


# ---------------------------------------------------------------------------------------------
# Security, disruption, overlays.


def pod_specs() -> list[tuple[str, dict, list[dict]]]:
    """(source, pod-level securityContext holder, containers) for every pod headserve deploys."""
    found = []
    for overlay in TRITON_OVERLAYS:
        spec = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
        found.append((overlay, spec, spec["containers"]))
    exporter = one(plain("exporter/exporter.yaml"), "Pod")["spec"]
    found.append(("exporter", exporter, exporter["containers"]))
    job = one(plain("ray/rayjob.yaml"), "RayJob")["spec"]["rayClusterSpec"]
    for where, group in (("ray head", job["headGroupSpec"]), *(("ray worker", g) for g in job["workerGroupSpecs"])):
        found.append((where, group["template"]["spec"], group["template"]["spec"]["containers"]))
    kserve = rendered("overlays/kserve")
    found.append(("kserve", one(kserve, "InferenceService")["spec"]["predictor"],
                  one(kserve, "ServingRuntime")["spec"]["containers"]))
    return found


def test_every_pod_runs_non_root_read_only_without_capabilities_under_runtime_default_seccomp():
    for source, spec, containers in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0 and pod["runAsGroup"] > 0, source
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, source
        assert spec["automountServiceAccountToken"] is False, source
        for c in containers:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, source
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False, source
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            needed = {"/tmp"} if source == "exporter" else {"/tmp", "/dev/shm"}  # the python backend's stubs
            assert needed <= writable, source
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("HOME", "").startswith(("/tmp", "/work")), source  # HOME on a writable volume


def test_servers_and_exporter_share_one_group_that_headserve_file_modes_let_read():
    groups = {source: (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"],
                       spec["securityContext"]["fsGroup"]) for source, spec, _ in pod_specs()}
    writers = ("exporter", "ray head", "ray worker")  # the repository's exporter; the embedding job's pods
    (server_group,) = {g for source, (_, g, fs) in groups.items() for g in (g, fs) if source not in writers}
    exporter_user, exporter_group, _ = groups["exporter"]
    assert exporter_group == server_group
    assert exporter_user not in {u for s, (u, _, _) in groups.items() if s not in writers}  # servers cannot write
    assert FILE_MODE & 0o040 and DIR_MODE & 0o050 == 0o050  # group reads files, lists and enters directories
    assert not FILE_MODE & 0o022 and not DIR_MODE & 0o022  # and neither group nor others write
    namespace = one(rendered(BASE), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_drains_keep_a_replica_serving():
    docs = rendered(BASE)
    pdb = one(docs, "PodDisruptionBudget")
    hpa = one(docs, "HorizontalPodAutoscaler")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and hpa["spec"]["minReplicas"] >= 2
    assert one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_gpu_overlay_asks_for_a_gpu_and_tolerates_gpu_nodes():
    docs = rendered("overlays/gpu")
    container = triton_container(docs)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    tolerations = one(docs, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_the_cpu_overlay_requests_no_gpu_and_exactly_the_cores_its_exported_models_use():
    import argparse

    from headserve.app.export import production_options, register
    from headserve.export.model_config import DataType, InstanceKind, ModelDesc, Runtime, TensorSpec, render

    docs = rendered("overlays/cpu")
    deployment = one(docs, "Deployment")
    container = triton_container(docs)
    assert not [k for part in container["resources"].values() for k in part if "gpu" in k]
    assert "tolerations" not in deployment["spec"]["template"]["spec"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    export_args = shlex.split(deployment["metadata"]["annotations"]["headserve.io/export-args"])
    args = parser.parse_args(["export", "encoder", "clip:tiny", "--repo", "/models", *export_args])
    options = production_options(args)
    assert args.runtime == "production" and options.kind is InstanceKind.KIND_CPU
    encoder = ModelDesc("encoder_x", (TensorSpec("pixels", DataType.TYPE_UINT8, (224, 224, 3)),),
                        (TensorSpec("embedding", DataType.TYPE_FP32, (512,)),))
    config = render(encoder, Runtime.PRODUCTION, options)
    (group,) = config.instance_group
    threads = int(config.parameters["intra_op_thread_count"].string_value)
    cores = group.count * threads
    assert str(cores) == container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "1"  # no second thread pool on top of ONNX Runtime's
    guide = (DEPLOY / "README.md").read_text()
    assert " ".join(export_args) in guide  # the guide exports with the same arguments


def test_the_encoded_overlay_is_the_base_with_only_the_image_swapped():
    base, encoded = rendered(BASE), rendered("overlays/encoded")
    triton_container(base)["image"] = triton_container(encoded)["image"]
    assert normalised(sorted(base, key=identity)) == normalised(sorted(encoded, key=identity))


# ---------------------------------------------------------------------------------------------
# The embedding job on KubeRay (deploy/ray/).


def test_the_ray_job_checker_refuses_a_misspelt_field_a_missing_group_name_and_a_bad_pod_template():
    job = one(plain("ray/rayjob.yaml"), "RayJob")
    assert check_ray_job(job) == []
    spec = job["spec"]
    spec["shutdownAfterJobFinish"] = True  # no trailing "es": pruned by the API server, the GPUs stay up
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    del worker["groupName"]
    worker["template"]["spec"]["containers"][0]["resource"] = {}  # "resources" misspelt inside the pod template
    problems = check_ray_job(job)
    assert "spec.shutdownAfterJobFinish is not a field of the CRD" in problems
    assert "workerGroupSpecs[None].groupName is missing" in problems
    assert any("workerGroupSpecs[None].template" in p and "resource" in p for p in problems)


def test_the_ray_job_runs_headserve_embed_on_gpu_workers_into_the_embeddings_claim():
    from headserve.app.cli import build_parser

    job = one(plain("ray/rayjob.yaml"), "RayJob")
    claims = {d["metadata"]["name"] for d in plain("ray/storage.yaml")}
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])  # what the head pod runs
    assert shlex.split(job["spec"]["entrypoint"])[0] == "headserve" and args.command == "embed"
    assert args.ray is not None  # joins the job's cluster through RAY_ADDRESS, which KubeRay sets
    cluster = job["spec"]["rayClusterSpec"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[data]=={cluster["rayVersion"]}"' in pyproject  # head, workers and the pin run one Ray
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert mounts["/embeddings"] == "headserve-embeddings" and mounts["/data"] == "headserve-datasets"
        assert {"headserve-embeddings", "headserve-datasets"} <= claims
        assert container["image"] == groups[0]["template"]["spec"]["containers"][0]["image"]
    assert str(args.out).startswith("/embeddings/") and str(args.dataset).startswith("/data/")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the driver's pod runs no Ray work
    (worker,) = cluster["workerGroupSpecs"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        worker["template"]["spec"]["tolerations"]
    guide = (DEPLOY / "README.md").read_text()
    assert "kubectl apply -f deploy/ray/storage.yaml -f deploy/ray/rayjob.yaml" in guide
