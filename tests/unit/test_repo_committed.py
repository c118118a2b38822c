"""`model_repository/` commits the example repository's configs; they must be what the generator writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from headserve.export.example import write_example_repository

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "model_repository"


def config_files(repo: Path) -> dict[str, str]:
    """Every config and labels file, by path relative to the repository (version directories excluded)."""
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.glob("*/*"))
            if p.is_file() and (p.name == "config.pbtxt" or p.name.endswith("labels.txt"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("example") / "model_repository"
    write_example_repository(repo, "production")
    return repo


def test_the_committed_configs_equal_what_the_generator_writes(generated):
    committed, fresh = config_files(COMMITTED), config_files(generated)
    assert sorted(committed) == sorted(fresh), "regenerate: headserve export example --repo model_repository"
    for name in fresh:
        assert committed[name] == fresh[name], (
            f"model_repository/{name} is stale; regenerate with `headserve export example --repo model_repository`")


def test_the_generated_example_repository_validates(generated):
    from headserve.export.validation import describe, validate_repository

    problems = validate_repository(generated)
    assert problems == [], describe(problems)


def test_weights_are_not_committed():
    tracked = subprocess.run(["git", "ls-files", "model_repository"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked and not [t for t in tracked if t.endswith((".onnx", ".py", ".json"))]
