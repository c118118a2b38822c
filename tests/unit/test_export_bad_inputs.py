"""Bad export inputs: one line naming the file and the fix, exit status 2, and the repository untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from headserve.app.cli import main
from headserve.artifact import WEIGHTS_FILE
from headserve.encoders import get_encoder
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.pipeline import export_head


@pytest.fixture(scope="module")
def clip_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_head(get_encoder("clip:tiny"), ExampleHead("cats"), tmp_path_factory.mktemp("a") / "cats")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its content (directories as "dir")."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def export_cli(capsys, artifact: Path, repo: Path) -> tuple[int, list[str]]:
    status = main(["export", "head", str(artifact), "--repo", str(repo)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return status, err


def test_a_truncated_head_safetensors_is_one_line_naming_the_file_and_the_repository_is_unchanged(
        clip_head, tmp_path, capsys):
    repo = tmp_path / "repo"
    export_head(clip_head, repo, "local")
    broken = tmp_path / "broken"
    shutil.copytree(clip_head, broken)
    weights = broken / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(repo)
    status, err = export_cli(capsys, broken, repo)
    assert status == 2
    assert len(err) == 1, err
    assert f"{weights} is not a readable safetensors file" in err[0] and "retrain" in err[0]
    assert snapshot(repo) == before


def test_a_repo_that_is_a_file_is_one_line_naming_it_and_the_file_is_unchanged(clip_head, tmp_path, capsys):
    repo = tmp_path / "repo.txt"
    repo.write_text("notes, not a repository\n")
    status, err = export_cli(capsys, clip_head, repo)
    assert status == 2
    assert err == [f"headserve export: error: --repo {repo} is a file, not a directory; pass the model repository "
                   "directory (it is created when missing)"]
    assert repo.read_text() == "notes, not a repository\n"
    status, err = export_cli(capsys, clip_head, repo / "inner")
    assert status == 2 and f"--repo {repo / 'inner'} lies under the file {repo}" in err[0]
    assert not (repo.parent / "inner").exists() and repo.read_text() == "notes, not a repository\n"


@pytest.mark.parametrize("content", [b"this is not an ONNX file\n", b"", b"\x08\x07"])
def test_an_encoder_model_onnx_that_is_not_onnx_is_refused_as_the_base_of_a_new_head(clip_head, tmp_path, capsys,
                                                                                    content):
    repo = tmp_path / "repo"
    export_head(clip_head, repo, "local")
    onnx_file = repo / "encoder_clip_tiny" / "1" / "model.onnx"
    onnx_file.write_bytes(content)
    before = snapshot(repo)
    status, err = export_cli(capsys, clip_head, repo)
    assert status == 2
    assert len(err) == 1, err
    assert f"{onnx_file} is not" in err[0]
    assert "export again" in err[0] and "headserve export encoder clip:tiny" in err[0]
    assert snapshot(repo) == before


def test_weights_copied_in_from_another_artifact_are_refused_naming_both_files_and_nothing_is_written(
        clip_head, tmp_path, capsys):
    other = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=1), tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(clip_head, mixed)
    shutil.copyfile(other / WEIGHTS_FILE, mixed / WEIGHTS_FILE)  # same shape, another head's numbers
    repo = tmp_path / "repo"
    export_head(clip_head, repo, "local")
    before = snapshot(repo)
    status, err = export_cli(capsys, mixed, repo)
    assert status == 2 and len(err) == 1, err
    assert f"{mixed / WEIGHTS_FILE} (sha256 " in err[0] and f"is not the weights file that {mixed / 'meta.json'}" in err[0]
    assert "copy meta.json and head.safetensors of one artifact together, or retrain" in err[0]
    assert snapshot(repo) == before
    status, err = export_cli(capsys, mixed, tmp_path / "fresh")
    assert status == 2 and not (tmp_path / "fresh").exists()


def test_an_artifact_saved_before_the_weights_digest_exports_with_one_warning_line(clip_head, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(clip_head, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["weights_sha256"]
    (old / "meta.json").write_text(json.dumps(meta))
    status, err = export_cli(capsys, old, tmp_path / "repo")
    assert status == 0
    assert err == [f"headserve export: warning: {old / 'meta.json'} records no digest of head.safetensors (the "
                   "artifact was saved by an older headserve), so whether these weights belong to this head cannot "
                   "be checked; retrain or re-save the head to record one"]


def test_an_unknown_field_in_the_preprocess_spec_is_one_line_naming_meta_json_and_creates_nothing(
        clip_head, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(clip_head, odd)
    meta = json.loads((odd / "meta.json").read_text())
    meta["preprocess"]["pad_to_square"] = True
    (odd / "meta.json").write_text(json.dumps(meta))
    status, err = export_cli(capsys, odd, tmp_path / "repo")
    assert status == 2
    assert err == [f"headserve export: error: {odd / 'meta.json'}: field 'preprocess': preprocess spec has fields this "
                   "headserve does not know: pad_to_square; upgrade headserve to the version that exported the model; "
                   "export the head with the headserve that trained it, or retrain it with this one"]
    assert not (tmp_path / "repo").exists(), "no repository, no lock file"


def test_export_encoder_into_a_repo_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    from headserve.app.cli import main

    repo = tmp_path / "repo.txt"
    repo.write_text("notes, not a repository\n")
    status = main(["export", "encoder", "clip:tiny", "--repo", str(repo / "inner")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"headserve export: error: --repo {repo / 'inner'} lies under the file {repo}, not a directory; "
                   "pass the model repository directory (it is created when missing)"]
    assert repo.read_text() == "notes, not a repository\n"
