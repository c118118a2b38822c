"""Every head kind `headserve train` makes is exported by `headserve export head`; a refused export of any kind
leaves the repository byte-identical and creates no new --repo.

The logistic-regression head (the kind that could not be exported) goes through both commands as processes;
the other kinds go through the same entry point in-process (`main`), which keeps each kind to a few seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

HEADSERVE = str(Path(sys.executable).with_name("headserve"))
# kind -> the flags of `headserve train` that make it (few epochs: the point is the kind of graph, not its accuracy)
KINDS: dict[str, tuple[str, ...]] = {
    "logreg": ("--hidden", "logreg"),
    "mlp_base": ("--hidden", "32", "--profile", "base", "--epochs", "10"),
    "mlp_gelu_ln": ("--hidden", "32", "--profile", "full", "--epochs", "10"),
    "arcface": ("--hidden", "32", "--profile", "arcface", "--epochs", "10"),
    "select": ("--select", "--epochs", "5"),
}


PROCESS_KIND = "logreg"


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([HEADSERVE, *args], capture_output=True, text=True, timeout=timeout)


def command(kind: str, *args: str) -> tuple[int, str, str]:
    """`headserve ARGS` as a process for PROCESS_KIND, else through ``main`` in this process: (status, out, err)."""
    if kind == PROCESS_KIND:
        done = run(*args)
        return done.returncode, done.stdout, done.stderr
    from headserve.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its content (directories as "dir")."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One artifact per head kind, each trained by `headserve train` on a demo-like dataset (tiny CLIP twin)."""
    from headserve.train.synth import SynthConfig, build_digits_dataset

    root = tmp_path_factory.mktemp("kinds")
    dataset = build_digits_dataset(root / "dataset", SynthConfig(num_images=40))
    out = {}
    for kind, flags in KINDS.items():
        status, _, err = command(kind, "train", str(dataset), "--out", str(root / kind), "--name", kind,
                                 "--encoder", "clip:tiny", "--cache", str(root / "cache"), *flags)
        assert status == 0, err[-2000:]
        out[kind] = root / kind
    return out


@pytest.fixture(scope="module")
def repo(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind exported into one repository by `headserve export head`."""
    repo = tmp_path_factory.mktemp("repo") / "r"
    for kind, artifact in artifacts.items():
        status, out, err = command(kind, "export", "head", str(artifact), "--repo", str(repo))
        assert status == 0, f"{kind}: {err[-2000:]}"
        assert f"{kind}_head version 1" in out
    return repo


def test_every_head_kind_is_exported_and_its_graph_gives_the_trainers_outputs(artifacts, repo):
    import onnxruntime as ort

    from headserve.export.validation import validate_repository
    from headserve.head import load_head

    assert validate_repository(repo) == []
    assert json.loads((artifacts["logreg"] / "meta.json").read_text())["head_type"] == "logreg"
    assert json.loads((artifacts["arcface"] / "meta.json").read_text())["head_config"]["classifier"] == "arcface"
    rng = np.random.default_rng(0)
    for kind, artifact in artifacts.items():
        meta, head = load_head(artifact)
        x = rng.standard_normal((16, meta.embedding_dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        session = ort.InferenceSession(str(repo / f"{kind}_head" / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        logits, probs, ood = session.run(["logits", "probs", "ood_score"], {"embedding": x})
        with torch.no_grad():
            want = [t.numpy() for t in head(torch.from_numpy(x))]
        assert np.abs(probs - want[1]).max() <= 1e-5, kind
        assert np.abs(ood - want[2]).max() <= 1e-5, kind
        assert (probs.argmax(1) == want[1].argmax(1)).all(), kind
        # logits: within 1e-5 of their own scale (they reach the hundreds for logreg)
        assert np.abs(logits - want[0]).max() <= 1e-5 * max(1.0, float(np.abs(want[0]).max())), kind


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_refused_export_of_any_kind_leaves_the_repository_byte_identical_and_creates_no_new_repo(
        kind, artifacts, repo, tmp_path):
    """A head whose weights hold a NaN fails the ONNX parity check (PyTorch's own output is not finite)."""
    from headserve.head import load_head, save_head

    meta, head = load_head(artifacts[kind])
    meta.name = f"broken_{kind}"  # a head the repository does not hold yet: no directory of it may appear
    with torch.no_grad():
        head.head.out.weight[0, 0] = float("nan")
    broken = save_head(tmp_path / "broken", meta, head)
    before = snapshot(repo)
    status, _, err = command(kind, "export", "head", str(broken), "--repo", str(repo))
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()], err
    assert f"ONNX export of broken_{kind} differs" in err and "PyTorch's own output is not finite" in err
    assert snapshot(repo) == before
    fresh = tmp_path / "new" / "repo"
    status, _, err = command(f"{kind} (in-process)", "export", "head", str(broken), "--repo", str(fresh))
    assert status == 2 and "PyTorch's own output is not finite" in err
    assert not (tmp_path / "new").exists(), "a refused export creates no repository (nor its lock file)"


def test_an_export_refused_under_the_lock_removes_the_new_repo_it_created(artifacts, tmp_path):
    """The encoder check runs under the repository lock: a head claiming other encoder weights is refused there."""
    from headserve.artifact import load_meta, load_tensors, save_artifact

    meta = load_meta(artifacts["logreg"])
    meta.encoder = replace(meta.encoder, fingerprint="sha256:" + "0" * 64)
    foreign = save_artifact(tmp_path / "foreign", meta, load_tensors(artifacts["logreg"], meta))
    fresh = tmp_path / "new" / "repo"
    status, _, err = command("in-process", "export", "head", str(foreign), "--repo", str(fresh))
    assert status == 2 and "fingerprint sha256:" + "0" * 64 in err, err
    assert not (tmp_path / "new").exists(), "no repository directory, no lock file"
