"""`repo validate` on the committed fixture repositories: the valid one passes, each defect is named with its fix."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest

from headserve.app import export as export_cli
from headserve.errors import RepositoryError
from headserve.export.validation import list_models, validate_repository

REPOS = Path(__file__).parents[1] / "assets" / "repos"

# fixture directory -> (file at fault, pattern its message must match)
DEFECTS = {
    "wrong_tensor_name": ("toy_head/config.pbtxt",
                          r"input 'embedding' is not in 1/model.onnx \(its inputs are \['input.1'\]\).*Fix: rename"),
    "wrong_dims": ("toy_head/config.pbtxt", r"input 'embedding' has dims \[5\] in the config but \[3\].*Fix: set dims: \[3\]"),
    "dangling_ensemble_map": ("toy/config.pbtxt", r"ensemble tensor 'features', which no step outputs.*Fix: map it"),
    "label_count_mismatch": ("toy/labels.txt", r"1 labels for output 'probs' of 2 classes.*Fix: write exactly 2 class names"),
    "mismatched_encoder": ("toy/config.pbtxt", r"trained on encoder_fingerprint 'sha256:cdcd.*encoder step 'encoder_toy' "
                                               r"has encoder_fingerprint 'sha256:abab.*Fix: retrain the head"),
    "unparsable_config": ("toy_head/config.pbtxt", r"3:1 .*no field named \"max_batch\".*Fix: correct the field"),
}


def run_cli(*argv: str) -> int:
    """The export CLI's own parser, as `headserve` registers it."""
    parser = argparse.ArgumentParser(prog="headserve")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_the_valid_fixture_repository_has_no_problems():
    assert validate_repository(REPOS / "valid") == []


@pytest.mark.parametrize("case", sorted(DEFECTS))
def test_each_defective_repository_names_the_file_and_the_fix(case):
    problems = validate_repository(REPOS / case)
    where, pattern = DEFECTS[case]
    matching = [p for p in problems if p.path == REPOS / case / where]
    assert matching, f"no problem reported for {where}: {[str(p) for p in problems]}"
    assert any(re.search(pattern, str(p)) for p in matching), [str(p) for p in matching]


def test_every_fixture_directory_is_covered_by_a_test():
    fixtures = {p.name for p in REPOS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert fixtures == set(DEFECTS) | {"valid"}


def test_a_missing_onnx_file_is_reported_with_its_path(tmp_path):
    repo = shutil.copytree(REPOS / "valid", tmp_path / "repo")
    (repo / "encoder_toy" / "1" / "model.onnx").unlink()
    problems = validate_repository(repo)
    assert [p.path for p in problems] == [repo / "encoder_toy" / "1" / "model.onnx"]
    assert "re-export" in problems[0].fix


def test_a_fingerprint_file_that_disagrees_with_the_config_is_reported(tmp_path):
    repo = shutil.copytree(REPOS / "valid", tmp_path / "repo")
    path = repo / "encoder_toy" / "1" / "fingerprint.json"
    path.write_text(path.read_text().replace("abab", "0000", 1))
    problems = validate_repository(repo)
    assert len(problems) == 1 and problems[0].path == path
    assert "differs from the config's encoder_fingerprint" in problems[0].message


@pytest.mark.parametrize("content", [b'{"fingerprint": "sha256:ab', b"[1, 2]", b"\xff\xfe not text"])
def test_a_fingerprint_file_cut_short_or_not_a_record_is_reported_not_read_as_absent(tmp_path, content):
    repo = shutil.copytree(REPOS / "valid", tmp_path / "repo")
    path = repo / "encoder_toy" / "1" / "fingerprint.json"
    path.write_bytes(content)
    problems = validate_repository(repo)
    assert [p.path for p in problems] == [path]
    assert "export the encoder again" in problems[0].fix


def test_export_reads_a_cut_short_fingerprint_file_as_an_error_naming_it_and_an_absent_one_as_none(tmp_path):
    from headserve.export.fingerprint_file import FingerprintFileError, read_fingerprint

    assert read_fingerprint(tmp_path / "fingerprint.json") is None
    (tmp_path / "fingerprint.json").write_text('{"fingerprint": "sha')
    with pytest.raises(FingerprintFileError, match=re.escape(str(tmp_path / "fingerprint.json")) + ".*cut short"):
        read_fingerprint(tmp_path / "fingerprint.json")


def test_only_versions_that_triton_would_load_are_checked(tmp_path):
    repo = shutil.copytree(REPOS / "valid", tmp_path / "repo")
    old = repo / "toy_head" / "0"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"not onnx")  # latest:1 serves version 1 only
    assert validate_repository(repo) == []


def test_repo_validate_cli_fails_with_every_problem_in_the_message():
    with pytest.raises(RepositoryError, match=r"2 problem\(s\)\n- .*toy/config.pbtxt.*\n- .*toy_head/config.pbtxt"):
        run_cli("repo", "validate", str(REPOS / "wrong_dims"))


def test_repo_validate_cli_says_valid_for_a_good_repository(capsys):
    assert run_cli("repo", "validate", str(REPOS / "valid")) == 0
    assert capsys.readouterr().out.strip().endswith(": valid")


def test_repo_list_shows_kind_versions_and_classes(capsys):
    rows = {r["model"]: r for r in list_models(REPOS / "valid")}
    assert rows["encoder_toy"]["kind"] == "encoder" and rows["encoder_toy"]["encoder"] == "toy:enc"
    assert rows["toy"]["kind"] == "ensemble" and rows["toy"]["classes"] == "cat,background"
    assert rows["toy_head"] == {"model": "toy_head", "kind": "head", "versions": "1", "runtime": "onnxruntime_onnx",
                                "encoder": "", "classes": ""}
    assert run_cli("repo", "list", str(REPOS / "valid")) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["model", "kind", "versions", "pinned", "runtime",
                                                               "encoder", "classes"]
