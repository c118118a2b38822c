"""The client installs without the training stack: nothing in it, nor in the core modules that claim to be
torch-free, may import torch, training or export, at import time or later inside a function."""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys

import pytest

import headserve
import headserve.client

# The heavy stack a client machine does not install (the `full` extra), and the library packages built on it.
TRAINING_STACK = ("torch", "torchvision", "transformers", "open_clip", "timm", "onnx", "onnxruntime", "openvino")
LIBRARY_ON_TORCH = ("headserve.train", "headserve.export")
# The core modules that import torch (docs/architecture.md's package table); every other one must not.
CORE_ON_TORCH = ("backbones", "head", "head_file", "device", "standins")
CLIENT_MODULES = ["headserve.client"] + sorted(f"headserve.client.{m.name}"
                                               for m in pkgutil.walk_packages(headserve.client.__path__))
CORE_TORCH_FREE = sorted(f"headserve.{m.name}" for m in pkgutil.iter_modules(headserve.__path__)
                         if not m.ispkg and m.name not in CORE_ON_TORCH)
GROUPS = {"every client module": CLIENT_MODULES, "every torch-free core module": CORE_TORCH_FREE}


def _source(module: str) -> str | None:
    """The file of a headserve module, or None when ``module`` names no module (an attribute of a package)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _imports(module: str) -> set[str]:
    """Every module ``module``'s source imports, at its top or inside a function (absolute imports)."""
    path = _source(module)
    assert path is not None, module
    found: set[str] = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _source(f"{node.module}.{a.name}")}
    return found


def _reached(roots: list[str]) -> list[str]:
    """Each import of the training stack or of train/export reachable from ``roots`` through headserve
    modules, as 'importer -> imported'."""
    seen: set[str] = set()
    todo = list(roots)
    bad = []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in sorted(_imports(module)):
            if name.split(".")[0] in TRAINING_STACK or name.startswith(LIBRARY_ON_TORCH):
                bad.append(f"{module} -> {name}")
            elif name.split(".")[0] == "headserve" and _source(name):
                todo.append(name)
    return sorted(bad)


def test_the_module_lists_cover_the_client_and_the_core():
    assert "headserve.client.inputs" in CLIENT_MODULES and "headserve.client.aio" in CLIENT_MODULES
    assert {"headserve.contract", "headserve.encoders", "headserve.server"} <= set(CORE_TORCH_FREE)
    assert not {"headserve.backbones", "headserve.head"} & set(CORE_TORCH_FREE)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_no_module_of_the_group_imports_torch_training_or_export_even_inside_a_function(group):
    assert _reached(GROUPS[group]) == []


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_importing_every_module_of_the_group_in_a_fresh_interpreter_loads_no_torch_training_or_export(group):
    code = ("import importlib, json, sys\n"
            f"for name in {GROUPS[group]!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m in {TRAINING_STACK!r} "
            f"or m.startswith({LIBRARY_ON_TORCH!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == []


def test_importing_the_client_loads_no_torch_transformers_or_open_clip():
    code = ("import sys, headserve.client, headserve.app.classify, headserve.client.aio; "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == ""


def test_the_classify_command_parses_without_loading_torch():
    code = ("import sys; from headserve.app.cli import build_parser; "
            "build_parser().parse_args(['classify', '--head', 'h', 'crop.png']); "
            "build_parser().parse_args(['gate', '--head', 'h', '--target', 't', 'crop.png']); "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == ""
