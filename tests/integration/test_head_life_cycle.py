"""A head's life cycle through the commands users run: `train --out` over an artifact, `artifacts list`,
`repo pin` (roll back) and `repo remove` on a repository that `headserve serve` serves, and `status`.

One served repository for the module: head ``pinme`` exported twice with other classes (version 1: cat, dog,
background; version 2: ant, bee, wasp, background) and head ``spare`` on the same encoder, served by
``headserve serve`` in its default (explicit) mode, so every repo command finds the server by itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.serving import Served, headserve_argv
from support.waiting import CALL_TIMEOUT_S

pytestmark = pytest.mark.integration

HEAD, SPARE = "pinme", "spare"
V1 = ("cat", "dog", "background")
V2 = ("ant", "bee", "wasp", "background")


def _run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(headserve_argv(*argv), capture_output=True, text=True, timeout=timeout)


def _main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """The console script's ``main`` in this process (torch is imported here already, a process would import it
    again for seconds): for the second path of a command that one test already drives as a process."""
    from headserve.app.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.multi_head import write_multi_head_ensemble
    from headserve.export.pipeline import export_head

    tmp = tmp_path_factory.mktemp("life_cycle")
    spec, repo = get_encoder("clip:tiny"), tmp / "repo"
    for name, seed, classes in ((HEAD, 1, V1), (HEAD, 2, V2), (SPARE, 3, V1)):
        export_head(write_example_head(spec, ExampleHead(name, seed=seed, classes=classes), tmp / f"{name}{seed}"),
                    repo)
    write_multi_head_ensemble(repo, [SPARE], name="spare_multi")
    server = Served(repo, None, tmp / "serve.log")
    try:
        yield server, repo
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def _status(url: str) -> dict[str, dict]:
    done = _run("status", "--url", url, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return {row["model"]: row for row in map(json.loads, done.stdout.splitlines())}


def test_repo_pin_rolls_the_served_head_back_to_a_version_with_its_own_classes_and_latest_undoes_it(served, capsys):
    from headserve.client import HeadClient

    server, repo = served
    crops = list(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    with HeadClient(server.url, timeout_s=CALL_TIMEOUT_S) as client:
        assert client.info(HEAD).classes == V2
        done = _run("repo", "pin", HEAD, "--version", "1", "--repo", str(repo))
        assert done.returncode == 0, done.stderr
        assert f"{HEAD}: pinned to head version 1 (classes cat, dog, background)" in done.stdout
        assert "rollout: 1 of 1 replica(s) ready" in done.stdout
        # Answers come from version 1: its classes, its labels, and its head id (the client checks each answer).
        preds = client.classify(HEAD, crops, top_k=len(V1))
        assert client.info(HEAD).classes == V1
        assert all({name for name, _ in p.top_k} == set(V1) for p in preds)
        assert (repo / f"{HEAD}_head" / "labels.txt").read_text().split() == list(V1)
        assert (repo / HEAD / "labels.txt").read_text().split() == list(V1)

        listed = _run("repo", "list", str(repo), timeout=60)
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        rows = {line.split()[0]: line.split() for line in lines}
        assert header.split()[:4] == ["model", "kind", "versions", "pinned"]
        assert rows[f"{HEAD}_head"][2:4] == ["1,2", "1"] and rows[HEAD][3] == "1"
        assert rows[f"{SPARE}_head"][3] != "1"

        status = _status(server.url)
        assert status[HEAD]["head"] == {**status[HEAD]["head"], "head_version": "1", "classes": list(V1),
                                        "encoder": "clip:tiny"}
        assert status[f"{HEAD}_head"]["versions"] == ["1"]

        code, out, err = _main(capsys, "repo", "pin", HEAD, "--latest", "--repo", str(repo))
        assert code == 0, err
        assert f"{HEAD}: unpinned, on the newest head version 2" in out and "1 of 1 replica(s) ready" in out
        preds = client.classify(HEAD, crops, top_k=len(V2))
        assert client.info(HEAD).classes == V2
        assert all({name for name, _ in p.top_k} == set(V2) for p in preds)
    assert _status(server.url)[HEAD]["head"]["head_version"] == "2"

    code, _, err = _main(capsys, "repo", "pin", HEAD, "--version", "7", "--repo", str(repo))
    assert code == 2 and err.count("\n") == 1, err
    assert "has no version 7 (it has 1, 2)" in err


def test_repo_remove_refuses_while_a_multi_head_ensemble_serves_the_head_then_removes_and_unloads_it(served, capsys):
    server, repo = served
    code, _, err = _main(capsys, "repo", "remove", SPARE, "--repo", str(repo))
    assert code == 2 and err.count("\n") == 1, err
    assert "spare_multi" in err and "--with-multi-head" in err
    assert (repo / SPARE).is_dir() and _status(server.url)[SPARE]["state"] == "READY"

    done = _run("repo", "remove", SPARE, "--repo", str(repo), "--with-multi-head", "--prune-encoder", timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"removed from {repo}: spare_multi, {SPARE}, {SPARE}_head" in done.stdout
    assert f"kept encoder encoder_clip_tiny: {HEAD} run(s) on it" in done.stdout
    assert f"unloaded on {server.url}: spare_multi, {SPARE}, {SPARE}_head" in done.stdout
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["encoder_clip_tiny", HEAD, f"{HEAD}_head"]
    status = _status(server.url)
    assert all(status.get(m, {"state": "gone"})["state"] != "READY" for m in ("spare_multi", SPARE, f"{SPARE}_head"))
    assert status[HEAD]["state"] == "READY"


def test_artifacts_list_shows_every_trained_head_with_its_encoder_classes_and_metrics(trained_heads):
    root = next(iter(trained_heads.values())).artifact.parent
    done = _run("artifacts", "list", str(root), "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {h.name for h in trained_heads.values()}
    for head in trained_heads.values():
        row = rows[head.name]
        assert row["encoder"] == f"{head.encoder} (untrained)"
        assert row["classes"] == list(head.outcome.meta.classes)
        assert row["metrics"]["macro_f1_fg"] == pytest.approx(head.outcome.metrics["macro_f1_fg"])
        assert Path(row["path"]) == head.artifact


def test_train_refuses_an_out_that_holds_an_artifact_naming_both_ways_out(trained_heads, digits_dataset):
    artifact = next(iter(trained_heads.values())).artifact
    before = {p.name: p.read_bytes() for p in artifact.iterdir()}
    done = _run("train", str(digits_dataset), "--out", str(artifact), "--encoder", "clip:tiny", timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"headserve train: error: --out {artifact}: already holds a trained artifact (meta.json, "
                           "head.safetensors); pass --overwrite to replace it, or another --out\n")
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before
