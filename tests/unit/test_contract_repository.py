"""The ServedHead record as export writes it, the client decodes it and `repo validate` checks it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from headserve.client.discovery import head_info_from_config
from headserve.client.errors import ServerSideError
from headserve.contract import HEAD_OUTPUTS, EncoderIdentity, ServedHead
from headserve.encoders import get_encoder
from headserve.export.model_config import Runtime, parse, render, to_text
from headserve.export.repository import EnsembleWiring, head_ensemble_desc, read_served_head, rewrite_head_ensemble
from headserve.export.validation import validate_repository

REPOS = Path(__file__).parents[1] / "assets" / "repos"
COMMITTED = Path(__file__).parents[2] / "model_repository"


def record(**changes) -> ServedHead:
    head = ServedHead(name="pets", classes=("cat", "dog", "background"),
                      encoder=EncoderIdentity.from_spec(get_encoder("dinov3:tiny"), "sha256:" + "ab" * 32),
                      background_indices=(2,), temperature=1.25, head_type="mlp", classifier="linear",
                      ood_threshold=0.5)
    return replace(head, **changes)


def test_the_client_decodes_the_record_export_renders():
    wiring = EnsembleWiring("encoder_dinov3_tiny", "pets_head", head_version=3, max_batch_size=16)
    config = render(head_ensemble_desc(record(), wiring), Runtime.PRODUCTION)
    info = head_info_from_config("pets", config, "7")
    assert info.served == record()
    assert (info.classes, info.background_indices, info.served.temperature, info.ood_threshold) == (
        ("cat", "dog", "background"), (2,), 1.25, 0.5)
    assert (info.encoder_type, info.served.encoder.model, info.embedding_dim, info.max_batch_size, info.version) == (
        "dinov3", "tiny-dinov3", 32, 16, "7")
    assert info.outputs == (*HEAD_OUTPUTS, "embedding") and info.has_ood_score
    assert info.preprocess == get_encoder("dinov3:tiny").preprocess and not info.prefilter_supported


def test_the_client_refuses_a_malformed_parameter_naming_it():
    config = render(head_ensemble_desc(record(), EnsembleWiring("e", "pets_head")), Runtime.LOCAL)
    config.parameters["background_indices"].string_value = "[5]"
    with pytest.raises(ServerSideError, match=r"head 'pets' publishes 'background_indices' '\[5\]'.*outside 0..2"):
        head_info_from_config("pets", config)


@pytest.mark.parametrize("head", ["digits_clip_tiny", "digits_dinov3_tiny", "textures_clip_tiny"])
def test_a_committed_head_ensemble_renders_again_byte_for_byte_from_its_record(tmp_path, head):
    repo = shutil.copytree(COMMITTED, tmp_path / "repo")
    served, wiring = read_served_head(repo, head, "this test")
    before = (repo / head / "config.pbtxt").read_text()
    rewrite_head_ensemble(repo, served, wiring)
    assert (repo / head / "config.pbtxt").read_text() == before
    assert to_text(parse(before)) == before


def _with_parameters(tmp_path: Path, **params: str) -> Path:
    repo = shutil.copytree(REPOS / "valid", tmp_path / "repo")
    path = repo / "toy" / "config.pbtxt"
    config = parse(path.read_text())
    for key, value in params.items():
        config.parameters[key].string_value = value
    path.write_text(to_text(config))
    return repo


PREPROCESS_4 = '{"input_size": 8, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "resize": "squash", ' \
               '"std": [0.25, 0.25, 0.25]}'


def test_validate_reports_a_malformed_record_parameter_naming_the_key(tmp_path):
    repo = _with_parameters(tmp_path, preprocess=PREPROCESS_4.replace('"input_size": 8', '"input_size": 4'),
                            temperature="warm")
    problems = [str(p) for p in validate_repository(repo) if p.path == repo / "toy" / "config.pbtxt"]
    assert len(problems) == 1 and "'preprocess'" in problems[0] and "input_size 4 is too small" in problems[0]


def test_validate_reports_an_input_the_published_preprocessing_does_not_produce(tmp_path):
    repo = _with_parameters(tmp_path, preprocess=PREPROCESS_4)
    problems = [str(p) for p in validate_repository(repo)]
    assert len(problems) == 1
    assert "input 'pixels' has dims [4, 4, 3], but the preprocess parameter resizes crops to 8x8" in problems[0]


def test_validate_reports_labels_in_another_order_than_the_published_classes(tmp_path):
    repo = _with_parameters(tmp_path, preprocess=PREPROCESS_4)
    config = (repo / "toy" / "config.pbtxt").read_text()
    (repo / "toy" / "config.pbtxt").write_text(config.replace("dims: 4\n  dims: 4\n", "dims: 8\n  dims: 8\n", 1))
    (repo / "toy" / "labels.txt").write_text("background\ncat\n")
    problems = [str(p) for p in validate_repository(repo) if p.path == repo / "toy" / "labels.txt"]
    assert len(problems) == 1 and "labels ['background', 'cat'] differ from the classes ['cat', 'background']" \
        in problems[0]


def test_an_answer_computed_by_another_head_than_the_record_describes_is_stale():
    from headserve.client.discovery import StaleAnswer, check_answer

    wiring = EnsembleWiring("encoder_dinov3_tiny", "pets_head", head_version=3)
    info = head_info_from_config("pets", render(head_ensemble_desc(record(head_id=41), wiring), Runtime.LOCAL), "3")
    assert info.head_id == 41
    probs = np.full((2, 3), 1 / 3, dtype=np.float32)
    check_answer(info, "3", {"probs": probs, "head_id": np.array([[41], [41]])})  # its own head: decoded
    with pytest.raises(StaleAnswer, match=r"answered by head id 41, 42, but version 3 of 'pets' publishes head id 41"):
        check_answer(info, "3", {"probs": probs, "head_id": np.array([[41], [42]])})


def test_an_ensemble_without_the_head_id_output_is_read_as_before_and_a_malformed_id_is_refused():
    old = render(head_ensemble_desc(record(head_id=41), EnsembleWiring("e", "pets_head", head_outputs=("logits",
                                                                                                       "probs"))),
                 Runtime.LOCAL)
    assert head_info_from_config("pets", old).head_id is None  # no output to check it on: not requested
    config = render(head_ensemble_desc(record(head_id=41), EnsembleWiring("e", "pets_head")), Runtime.LOCAL)
    config.parameters["head_id"].string_value = "-3"
    with pytest.raises(ServerSideError, match=r"head 'pets' publishes a malformed 'head_id' parameter '-3'"):
        head_info_from_config("pets", config)


def test_an_exported_head_graph_answers_the_id_its_ensemble_publishes(tmp_path):
    import onnxruntime as ort

    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head

    artifact = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=4), tmp_path / "a")
    other = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=5), tmp_path / "b")
    repo = tmp_path / "repo"
    for path in (artifact, artifact, other):  # the same artifact twice, then other weights
        export_head(path, repo, "local")
    ids = []
    for version in (1, 2, 3):
        session = ort.InferenceSession(str(repo / "cats_head" / str(version) / "model.onnx"))
        x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
        ids.append({int(i) for i in session.run(["head_id"], {"embedding": x})[0].ravel()})
    published = read_served_head(repo, "cats", "this test")[0].head_id
    assert ids[2] == {published}
    assert ids[0] == ids[1] != ids[2]  # the same artifact keeps its id; other weights get another
