"""The life-cycle commands without a server: `train`/`sweep --out` over earlier artifacts, `artifacts list`, `repo remove`."""

from __future__ import annotations

from pathlib import Path

import pytest

from headserve.app.cli import EXIT_BAD_INPUT, main
from headserve.errors import ConfigError
from headserve.train.pipeline import refuse_existing_artifact


def _artifact(directory: Path, *files: str) -> Path:
    directory.mkdir(parents=True)
    for name in files:
        (directory / name).write_text("{}")
    return directory


def test_an_out_holding_either_artifact_file_is_refused_and_overwrite_lets_it_through(tmp_path):
    for files in (("meta.json",), ("head.safetensors",)):
        out = _artifact(tmp_path / files[0], *files)
        with pytest.raises(ConfigError, match=rf"out {out}: already holds a trained artifact \({files[0]}\); pass "
                                              r"`overwrite` to replace it, or another `out`"):
            refuse_existing_artifact(out, overwrite=False)
        refuse_existing_artifact(out, overwrite=True)
    refuse_existing_artifact(tmp_path / "new", overwrite=False)  # a fresh directory is what --out is for
    refuse_existing_artifact(_artifact(tmp_path / "empty"), overwrite=False)


def test_sweep_refuses_an_out_with_an_earlier_sweeps_heads_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    head = _artifact(tmp_path / "o" / "heads" / "base_clip_tiny", "meta.json", "head.safetensors")
    before = (head / "meta.json").read_text()
    assert main(["sweep", "ds", "--out", "o"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("headserve sweep: error: --out o/heads/base_clip_tiny: already holds a trained "
                                       "artifact (meta.json, head.safetensors); pass --overwrite to replace it, or "
                                       "another --out\n")
    assert (head / "meta.json").read_text() == before


def test_artifacts_list_names_an_unreadable_meta_json_and_skips_folders_being_written(tmp_path, capsys):
    broken = _artifact(tmp_path / "heads" / "broken", "head.safetensors")
    (broken / "meta.json").write_text("{not json")
    _artifact(tmp_path / "heads" / ".parts.staging.x1", "meta.json")  # an artifact being written: not listed
    assert main(["artifacts", "list", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"headserve artifacts: skipped {broken / 'meta.json'}: ") and err.count("\n") == 1, err
    assert out == f"{tmp_path}: no artifacts (folders with meta.json) found\n"


def test_repo_remove_prunes_the_encoder_only_when_asked_and_no_head_runs_on_it(tmp_path, capsys):
    """On a copy of the committed example repository (configs only): dinov3's one head, then a clip head."""
    import shutil

    repo = shutil.copytree(Path(__file__).parents[2] / "model_repository", tmp_path / "repo")
    assert main(["repo", "remove", "digits_dinov3_tiny", "--repo", str(repo), "--prune-encoder"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed from {repo}: digits_dinov3_tiny_encoded, digits_dinov3_tiny, "
                          "digits_dinov3_tiny_head, decode_dinov3_tiny, encoder_dinov3_tiny\n"), out
    assert "removed encoder encoder_dinov3_tiny: no head runs on it any more" in out
    assert not [p for p in repo.iterdir() if "dinov3" in p.name], "a removed model (or its renamed copy) is left"
    assert main(["repo", "remove", "digits_dinov2_tiny", "--repo", str(repo)]) == 0
    assert "kept encoder encoder_dinov2_tiny, which no head runs on any more; --prune-encoder removes it" in \
        capsys.readouterr().out
    assert (repo / "encoder_dinov2_tiny").is_dir() and not (repo / "digits_dinov2_tiny_head").exists()
    assert main(["repo", "remove", "digits_clip_tiny", "--repo", str(repo), "--with-multi-head",
                 "--prune-encoder"]) == 0
    out = capsys.readouterr().out
    assert "heads_clip_tiny" in out.splitlines()[0] and "kept encoder encoder_clip_tiny: textures_clip_tiny" in out
    assert (repo / "encoder_clip_tiny").is_dir() and (repo / "textures_clip_tiny").is_dir()


def test_artifacts_list_status_and_repo_list_run_without_loading_torch(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).parents[2] / "model_repository"
    code = ("import sys; from headserve.app.cli import main; "
            f"codes = (main(['artifacts', 'list', {str(tmp_path)!r}]), main(['repo', 'list', {str(repo)!r}]), "
            "main(['status', '--url', '127.0.0.1:1', '--timeout', '2'])); "
            "print(codes, ','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "(0, 0, 2) ", done.stdout + done.stderr  # status: nothing listens there
    assert "headserve status: error: reading what 127.0.0.1:1 serves failed (StatusCode.UNAVAILABLE" in done.stderr


def test_a_head_keeps_its_previous_version_loaded_only_while_the_newest_has_as_many_classes(tmp_path):
    """The newest version's class count comes from its record, not from a config a pin set to an older one."""
    import json

    from headserve.export.repository import SERVED_RECORD, head_keep_versions, newest_classes

    head_dir = tmp_path / "h_head"
    assert newest_classes(head_dir) is None and head_keep_versions(None, 3) == 2  # the first version
    for version, classes in ((1, ["a", "b", "bg"]), (2, ["a", "b", "c", "bg"])):
        (head_dir / str(version)).mkdir(parents=True)
        (head_dir / str(version) / SERVED_RECORD).write_text(json.dumps({"classes": json.dumps(classes)}))
    (head_dir / "config.pbtxt").write_text('name: "h_head"\nversion_policy { specific { versions: 1 } }\n')
    assert newest_classes(head_dir) == 4  # version 2's, although the pinned config serves version 1
    assert head_keep_versions(4, 4) == 2 and head_keep_versions(4, 3) == 1
    (head_dir / "2" / SERVED_RECORD).unlink()  # exported before records were kept, and the config is pinned
    assert newest_classes(head_dir) == 0 and head_keep_versions(0, 4) == 1
