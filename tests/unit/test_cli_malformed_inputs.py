"""A malformed artifact, dataset or repository makes every command that reads it say so in one line and exit 2.

Each case runs the `headserve` console script as a process, as a user does, on a copy of a real trained
artifact (or dataset, or exported repository) with one defect: a field the reader does not know, a file
cut short, a value of the wrong type, a missing file. No traceback may reach the user.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from headserve.app.cli import EXIT_BAD_INPUT

SCRIPT = Path(sys.executable).with_name("headserve")
TINY = "clip:tiny"


def _edit_meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(artifact: Path) -> None:
        meta = json.loads((artifact / "meta.json").read_text())
        change(meta)
        (artifact / "meta.json").write_text(json.dumps(meta))
    return corrupt


def _cut(name: str) -> Callable[[Path], None]:
    def corrupt(artifact: Path) -> None:
        data = (artifact / name).read_bytes()
        (artifact / name).write_bytes(data[: len(data) // 2])
    return corrupt


# defect -> (how to make it in an artifact directory, what the one line says, whether only weights readers see it)
ARTIFACT_DEFECTS: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "an unknown field inside preprocess": (
        _edit_meta(lambda m: m["preprocess"].update(pad_to_square=True)),
        r"meta.json: field 'preprocess': preprocess spec has fields this headserve does not know: pad_to_square",
        False),
    "meta.json cut short": (_cut("meta.json"), r"meta.json:\d+: not valid JSON", False),
    "classes of the wrong type": (
        _edit_meta(lambda m: m.update(classes=5)), r"meta.json: field 'classes' is 5, not a JSON list",
        False),
    "embedding_dim of the wrong type": (
        _edit_meta(lambda m: m.update(embedding_dim="wide")),
        r"meta.json: field 'embedding_dim' is 'wide', not a whole number", False),
    "no head.safetensors": (lambda a: (a / "head.safetensors").unlink(), r"head.safetensors does not exist", True),
    "head.safetensors cut short": (_cut("head.safetensors"), r"head.safetensors is not a readable safetensors file",
                                   True),
}
# command -> its argv after `headserve`, given the artifact and a scratch directory
ARTIFACT_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "export head": lambda a, tmp: ["export", "head", str(a), "--repo", str(tmp / "repo")],
    "drift": lambda a, tmp: ["drift", str(a), str(tmp / "window.jsonl"), "--out", str(tmp / "out")],
    "report": lambda a, tmp: ["report", str(a), "--out", str(tmp / "out")],
}
WEIGHT_READERS = {"export head"}  # drift and report read meta.json only


def _run(argv: list[str], tmp: Path) -> str:
    """The command's one error line; fails the test on any other exit status, a traceback or more lines."""
    done = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"headserve {argv[0]}: error: "), lines[0]
    return lines[0]


ARTIFACT_CASES = [(defect, command) for defect, (_, _, weights_only) in ARTIFACT_DEFECTS.items()
                  for command in ARTIFACT_COMMANDS if command in WEIGHT_READERS or not weights_only]


@pytest.mark.parametrize("defect, command", ARTIFACT_CASES, ids=[f"{c}: {d}" for d, c in ARTIFACT_CASES])
def test_a_malformed_artifact_is_one_line_and_exit_2_for_every_command_that_reads_it(
        defect, command, trained_heads, tmp_path):
    artifact = tmp_path / "head"
    shutil.copytree(trained_heads[TINY].artifact, artifact)
    corrupt, says, _ = ARTIFACT_DEFECTS[defect]
    corrupt(artifact)
    (tmp_path / "window.jsonl").write_text(json.dumps({"label": "digit_0", "confidence": 0.9}) + "\n")
    line = _run(ARTIFACT_COMMANDS[command](artifact, tmp_path), tmp_path)
    assert str(artifact) in line and re.search(says, line), line
    assert not (tmp_path / "repo").exists() and not (tmp_path / "out").exists(), "a refused command writes nothing"


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_dataset_whose_data_yaml_is_not_yaml_is_one_line_naming_the_file_and_line(command, digits_dataset, tmp_path):
    dataset = tmp_path / "ds"
    shutil.copytree(digits_dataset, dataset)
    (dataset / "data.yaml").write_text("names: [a, b\n  c: :\n")
    line = _run([command, str(dataset), "--out", str(tmp_path / "out"), "--epochs", "1"], tmp_path)
    assert f"{dataset / 'data.yaml'}:2: not valid YAML (expected ',' or ']', but got ':')" in line, line
    assert not (tmp_path / "out").exists()


def test_export_into_a_repository_whose_encoder_config_is_not_text_is_one_line_naming_it(
        trained_heads, local_repo, tmp_path):
    repo = tmp_path / "repo"
    encoder = "encoder_clip_tiny"
    shutil.copytree(local_repo / encoder, repo / encoder)
    config = repo / encoder / "config.pbtxt"
    config.write_bytes(b"\xff\xfe not a model config")
    line = _run(["export", "head", str(trained_heads[TINY].artifact), "--repo", str(repo)], tmp_path)
    assert f"{config} is not a valid Triton ModelConfig ('utf-8' codec can't decode" in line, line
    models = sorted(p.name for p in repo.iterdir() if not p.name.startswith("."))  # .headserve.lock stays
    assert models == [encoder], "nothing else was written into the repository"


def test_repo_validate_reports_a_config_that_is_not_text_as_a_problem(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parents[1] / "assets" / "repos" / "valid", repo)
    config = repo / "toy" / "config.pbtxt"
    config.write_bytes(b"\xff\xfe not a model config")
    done = subprocess.run([str(SCRIPT), "repo", "validate", str(repo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in done.stderr, done.stderr
    summary, *problems = done.stderr.strip().splitlines()  # one summary line, then one line per problem
    assert summary == f"headserve repo: error: {repo}: 1 problem(s)"
    assert problems == [f"- {config}: not a valid Triton ModelConfig ('utf-8' codec can't decode byte 0xff in "
                        "position 0: invalid start byte). Fix: correct the field named at that line:column, or "
                        "re-export the model."]


WINDOW_DEFECTS: dict[str, tuple[bytes, str]] = {  # defect -> (the window file's bytes, what the one line says)
    "a confidence that is text": (b'{"label": "digit_0", "confidence": "high"}\n',
                                  r"window.jsonl:1: confidence 'high' or ood_score None is not a number"),
    "an ood_score that is a list": (b'{"label": "digit_0", "confidence": 0.9, "ood_score": [1]}\n',
                                    r"window.jsonl:1: confidence 0.9 or ood_score \[1\] is not a number"),
    "bytes that are not UTF-8": (b"\xff\xfe\n", r"window.jsonl cannot be read \(not UTF-8 text: invalid start byte"),
}


@pytest.mark.parametrize("defect", WINDOW_DEFECTS)
def test_drift_on_a_malformed_window_is_one_line_naming_the_file(defect, trained_heads, tmp_path):
    content, says = WINDOW_DEFECTS[defect]
    (tmp_path / "window.jsonl").write_bytes(content)
    line = _run(["drift", str(trained_heads[TINY].artifact), str(tmp_path / "window.jsonl"), "--out",
                 str(tmp_path / "out")], tmp_path)
    assert re.search(says, line), line
    assert not (tmp_path / "out").exists()
