"""A small kustomize renderer for the tests: the kustomize features deploy/ uses, nothing more.

tests/unit/test_deploy_manifests.py renders every overlay through `kubectl kustomize` when the binary is
present, else through ``render_python`` here, which reads the same kustomization files (resources,
patches, images, namespace, components, configMapGenerator) and fails loudly on anything else. When
kubectl is present the two are compared, so this renderer stays faithful.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "images", "namespace", "components",
                        "configMapGenerator"}
GENERATOR_FIELDS = {"name", "namespace", "files", "options"}
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes"}  # strategic-merge lists keyed by name
CLUSTER_SCOPED = {"Namespace"}


def strategic_merge(base: object, patch: object, key: str = "") -> object:
    """Kubernetes strategic merge for what our patches do: maps merge, null deletes, named lists merge."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if key in MERGE_BY_NAME and isinstance(base, list) and isinstance(patch, list):
        by_name = {item["name"]: item for item in base}
        merged_list = [strategic_merge(by_name[p["name"]], p, "") if p["name"] in by_name else copy.deepcopy(p)
                       for p in patch]
        patched = {p["name"] for p in patch}
        return merged_list + [item for item in base if item["name"] not in patched]
    return copy.deepcopy(patch)


def identity(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def render_python(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}/kustomization.yaml uses {unknown}, which the test renderer does not know"
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render_python(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        docs.append(generated_config_map(directory, generator))
    for component in kustomization.get("components", []):  # a Component: its resources and generators
        docs += render_python(directory / component)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only file patches are rendered here, not {patch}"
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            (index,) = [i for i, d in enumerate(docs) if identity(d) == identity(change)]
            docs[index] = strategic_merge(docs[index], change)
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in pod_spec(doc).get("containers", []) if pod_spec(doc) else []:
                name, _, tag = container["image"].rpartition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def generated_config_map(directory: Path, generator: dict) -> dict:
    """A configMapGenerator entry with files, as kustomize writes it; only stable names (no hash suffix)."""
    unknown = set(generator) - GENERATOR_FIELDS
    assert not unknown, f"{directory}: configMapGenerator uses {unknown}, which the test renderer does not know"
    options = generator.get("options", {})
    assert options.get("disableNameSuffixHash") is True, f"{directory}: the test renderer writes no name hashes"
    metadata = {"name": generator["name"], **({"namespace": generator["namespace"]} if "namespace" in generator
                                              else {}), **({"labels": options["labels"]} if "labels" in options
                                                           else {})}
    data = {Path(f).name: (directory / f).read_text() for f in generator.get("files", [])}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def render_kubectl(directory: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@lru_cache(maxsize=None)
def _rendered(overlay: str) -> tuple:
    docs = render_kubectl(DEPLOY / overlay) if KUBECTL else render_python(DEPLOY / overlay)
    return tuple(docs)


def rendered(overlay: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(overlay)))


def normalised(value: object) -> object:
    """Order-free form: documents by identity, named lists by name (their order means nothing here)."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalised(v) for v in value]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: str(i["name"]))
        return items
    return value


def pod_spec(doc: dict) -> dict | None:
    """The pod spec a resource runs, if any (Deployment template, bare Pod)."""
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None
