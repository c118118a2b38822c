"""Each ensemble runs the head version whose classes it publishes, and export keeps dependents in step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from headserve.encoders import get_encoder
from headserve.export.encoded_input import add_encoded_input
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import parse
from headserve.export.multi_head import write_multi_head_ensemble
from headserve.export.pipeline import export_head
from headserve.export.validation import validate_repository


def _config(repo: Path, model: str):
    return parse((repo / model / "config.pbtxt").read_text())


def _pins(repo: Path, ensemble: str) -> dict[str, int]:
    return {s.model_name: s.model_version for s in _config(repo, ensemble).ensemble_scheduling.step}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    spec = get_encoder("clip:tiny")
    repo = tmp_path / "repo"
    for head, seed in (("cats", 1), ("dogs", 2)):
        export_head(write_example_head(spec, ExampleHead(head, seed=seed), tmp_path / head), repo, "local")
    return repo


def test_the_ensemble_pins_the_head_version_it_was_written_with_and_the_head_keeps_two(repo, tmp_path):
    assert _pins(repo, "cats") == {"encoder_clip_tiny": -1, "cats_head": 1}
    export_head(write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=5), tmp_path / "c2"), repo,
                "local")
    assert _pins(repo, "cats") == {"encoder_clip_tiny": -1, "cats_head": 2}
    assert _config(repo, "cats_head").version_policy.latest.num_versions == 2
    assert validate_repository(repo) == []


def test_a_new_head_version_writes_new_versions_of_its_multi_head_and_encoded_ensembles(repo, tmp_path):
    write_multi_head_ensemble(repo, ["cats", "dogs"], "local", "pets")
    add_encoded_input(repo, "cats", "local")
    assert _pins(repo, "pets")["cats_head"] == 1 and _pins(repo, "cats_encoded")["cats_head"] == 1
    written = export_head(write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=5), tmp_path / "c2"),
                          repo, "local")
    assert {w.name for w in written} >= {"cats_head", "cats", "cats_encoded", "pets"}
    assert _pins(repo, "pets") == {"encoder_clip_tiny": -1, "cats_head": 2, "dogs_head": 1}
    assert _pins(repo, "cats_encoded")["cats_head"] == 2
    assert validate_repository(repo) == []


def test_validate_reports_a_step_pinned_to_a_version_triton_will_not_load(repo):
    shutil.rmtree(repo / "cats_head" / "1")
    shutil.copytree(repo / "dogs_head" / "1", repo / "cats_head" / "2")  # any loadable version 2 (the pin matters)
    problems = [p for p in validate_repository(repo) if "pinned" in p.message]
    assert len(problems) == 1 and "'cats_head' is pinned to version 1" in problems[0].message
    assert "export the head again" in problems[0].fix
