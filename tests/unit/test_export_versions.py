"""Heads as versioned units: each export is the next version, and a head never joins a foreign encoder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from headserve.artifact import load_meta, load_tensors, save_artifact
from headserve.encoders import get_encoder
from headserve.errors import EncoderMismatchError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.pipeline import export_head
from headserve.export.validation import validate_repository


@pytest.fixture(scope="module")
def clip_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_head(get_encoder("clip:tiny"), ExampleHead("cats"), tmp_path_factory.mktemp("a") / "cats")


def versions(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir())


def test_exporting_a_head_again_writes_the_next_version_and_reuses_the_encoder(clip_head, tmp_path):
    repo = tmp_path / "repo"
    first = {w.name: w.version for w in export_head(clip_head, repo, "local")}
    second = {w.name: w.version for w in export_head(clip_head, repo, "local")}
    assert first == {"encoder_clip_tiny": 1, "cats_head": 1, "cats": 1}
    assert second == {"cats_head": 2, "cats": 2}
    # Staging directories are hidden and gone: Triton sees only complete numbered versions.
    assert versions(repo / "cats_head") == ["1", "2"] and versions(repo / "encoder_clip_tiny") == ["1"]
    assert validate_repository(repo) == []


def test_export_head_hashes_the_encoder_checks_its_identity_and_takes_the_repository_lock_once(
        clip_head, tmp_path, monkeypatch):
    """Counted by wrapping the real functions (they still run): hashing a ViT-L's weights takes seconds."""
    import headserve.export.pipeline as pipeline
    import headserve.export.repository as repository
    import headserve.lockfile as lockfile
    from headserve.contract import EncoderIdentity

    calls: list[str] = []

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pipeline, "fingerprint", counted("fingerprint", pipeline.fingerprint))
    monkeypatch.setattr(repository, "fingerprint", counted("fingerprint", repository.fingerprint))
    monkeypatch.setattr(EncoderIdentity, "require_match", counted("check", EncoderIdentity.require_match))
    monkeypatch.setattr(lockfile, "_lock", counted("lock", lockfile._lock))
    written = export_head(clip_head, tmp_path / "repo", "local")
    assert [w.name for w in written] == ["encoder_clip_tiny", "cats_head", "cats"]
    assert sorted(calls) == ["check", "fingerprint", "lock"]
    record = json.loads((tmp_path / "repo" / "encoder_clip_tiny" / "1" / "fingerprint.json").read_text())
    assert record["fingerprint"] == load_meta(clip_head).encoder.fingerprint  # the one hash is the one published


def test_the_encoder_version_carries_the_fingerprint_the_head_was_trained_against(clip_head, tmp_path):
    export_head(clip_head, tmp_path, "local")
    record = json.loads((tmp_path / "encoder_clip_tiny" / "1" / "fingerprint.json").read_text())
    assert record["fingerprint"] == load_meta(clip_head).encoder.fingerprint
    assert record["encoder_name"] == "clip:tiny" and record["embedding_dim"] == 32


def test_a_head_trained_on_other_encoder_weights_is_refused_naming_both_fingerprints(clip_head, tmp_path):
    repo = tmp_path / "repo"
    export_head(clip_head, repo, "local")
    meta = load_meta(clip_head)
    real = meta.encoder.fingerprint
    meta.encoder = replace(meta.encoder, fingerprint="sha256:" + "0" * 64)
    foreign = save_artifact(tmp_path / "foreign", meta, load_tensors(clip_head))
    with pytest.raises(EncoderMismatchError, match=rf"fingerprint sha256:0{{64}}.*fingerprint {real}.*Retrain"):
        export_head(foreign, repo, "local")
    assert versions(repo / "cats_head") == ["1"]


def test_a_head_is_refused_by_an_encoder_of_another_family(tmp_path):
    dino_head = write_example_head(get_encoder("dinov3:tiny"), ExampleHead("dogs"), tmp_path / "dogs")
    with pytest.raises(EncoderMismatchError, match=r"trained on dinov3:tiny-dinov3.*encoder clip:tiny is clip:tiny-ViT"):
        export_head(dino_head, tmp_path / "repo", "local", encoder_name="clip:tiny")
    assert not (tmp_path / "repo" / "dogs_head").exists()


def test_a_local_version_without_its_runner_fails_validation_with_the_fix(clip_head, tmp_path):
    export_head(clip_head, tmp_path, "local")
    (tmp_path / "cats_head" / "1" / "model.py").unlink()
    (problem,) = validate_repository(tmp_path)
    assert problem.path == tmp_path / "cats_head" / "1" / "model.py"
    assert "re-export with `runtime` local" in problem.fix  # the CLI spells it --runtime local
    from headserve.app.cli import error_line
    from headserve.errors import RepositoryError

    assert "re-export with --runtime local" in error_line(RepositoryError(str(problem)))
