"""The multi-head ensemble wires one encoder step to every head and refuses heads of different encoders."""

from __future__ import annotations

import json

import pytest

from headserve.encoders import get_encoder
from headserve.errors import RepositoryError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import parse
from headserve.export.multi_head import write_multi_head_ensemble
from headserve.export.pipeline import export_head
from headserve.export.validation import validate_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("multi")
    for i, (head, encoder) in enumerate({"cats": "clip:tiny", "dogs": "clip:tiny", "birds": "dinov3:tiny"}.items()):
        export_head(write_example_head(get_encoder(encoder), ExampleHead(head, seed=i), root / "art" / head),
                    root / "repo", "local")
    return root / "repo"


def test_one_encoder_step_feeds_every_head_step(repo):
    written = write_multi_head_ensemble(repo, ["cats", "dogs"])
    config = parse((repo / written.name / "config.pbtxt").read_text())
    steps = [(s.model_name, dict(s.input_map)) for s in config.ensemble_scheduling.step]
    assert steps == [("encoder_clip_tiny", {"pixels": "pixels"}), ("cats_head", {"embedding": "head_input"}),
                     ("dogs_head", {"embedding": "head_input"})]
    assert json.loads(config.parameters["heads"].string_value) == ["cats", "dogs"]
    probs = {o.name: o.label_filename for o in config.output if o.label_filename}
    assert probs == {"cats__probs": "cats_labels.txt", "dogs__probs": "dogs_labels.txt"}
    assert validate_repository(repo) == []


def test_heads_of_different_encoders_are_refused_naming_each_encoder(repo):
    with pytest.raises(RepositoryError, match=r"'cats': 'encoder_clip_tiny'.*'birds': 'encoder_dinov3_tiny'.*group them"):
        write_multi_head_ensemble(repo, ["cats", "birds"])


def test_a_head_that_is_not_in_the_repository_is_refused(repo):
    with pytest.raises(RepositoryError, match=r"head 'lions' is not in .*export it first"):
        write_multi_head_ensemble(repo, ["cats", "lions"])
