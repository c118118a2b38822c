"""Repository files are readable by the server's group, whatever the exporter's umask.

In the cluster the Triton container runs as a fixed non-root UID that shares only the group
(fsGroup) with whoever exported; a 0600 config would make it refuse the model.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from headserve.encoders import get_encoder
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.pipeline import export_head
from headserve.fsutil import DIR_MODE, FILE_MODE, publish_dir, staging_dir, write_text_atomic
from headserve.lockfile import LOCK_FILE


@pytest.fixture
def strict_umask():
    """The strictest common umask: modes must come from headserve, not from the environment."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        found[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return found


def test_the_chosen_modes_let_the_group_read_and_enter_but_not_write_and_others_see_nothing():
    assert DIR_MODE == 0o750 and FILE_MODE == 0o640


def test_an_exported_repository_is_group_readable_throughout_under_a_0077_umask(strict_umask, tmp_path):
    artifact = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats"), tmp_path / "artifacts" / "cats")
    repo = tmp_path / "serving" / "repo"
    export_head(artifact, repo, "local")
    export_head(artifact, repo, "local")  # a second version goes through the replace path too
    found = modes(repo)
    assert {"encoder_clip_tiny/1/model.onnx", "cats_head/2/model.onnx", "cats/config.pbtxt",
            "cats_head/labels.txt"} <= set(found)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (DIR_MODE if (repo / name).is_dir() else FILE_MODE)}
    assert wrong == {}
    assert stat.S_IMODE((tmp_path / "serving").stat().st_mode) == DIR_MODE  # parents it had to create
    # No staging left behind; the writers' lock file stays by design (flock needs a file, see lockfile.py).
    assert not [p for p in repo.rglob(".*") if p.name != LOCK_FILE]


def test_writes_replace_a_file_whole_with_the_group_mode(strict_umask, tmp_path):
    target = write_text_atomic(tmp_path / "new" / "config.pbtxt", "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE
    assert stat.S_IMODE(target.parent.stat().st_mode) == DIR_MODE


def test_a_published_directory_replaces_the_old_one_and_keeps_nothing_private(strict_umask, tmp_path):
    final = tmp_path / "model" / "1"
    for text in ("old", "new"):
        staged = staging_dir(final)
        (staged / "sub").mkdir()
        (staged / "sub" / "weights.bin").write_text(text)  # written with the 0077 umask: 0600
        publish_dir(staged, final)
    assert (final / "sub" / "weights.bin").read_text() == "new"
    assert modes(final) == {".": DIR_MODE, "sub": DIR_MODE, "sub/weights.bin": FILE_MODE}
    assert sorted(p.name for p in final.parent.iterdir()) == ["1"]
