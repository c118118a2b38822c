"""Labels and names: one YOLO parser for training and the client, class names checked where they enter,
and answers refused when they do not belong to the head a client knows."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headserve.errors import ClassNameError, HeadserveError


def _dataset(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]], names: str = "a\nb\n") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text(names)
    for stem, (w, h) in sizes.items():
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.png")
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_bytes(text.encode("utf-8"))
    return root


def test_a_label_file_with_a_utf8_bom_keeps_its_first_line(tmp_path):
    from headserve.client.crops import crops_from_yolo
    from headserve.train.dataset import read_yolo

    root = _dataset(tmp_path, {"x": "\ufeff0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.2\n"}, {"x": (64, 64)})
    data = read_yolo(root)
    assert [o.source.rsplit(":", 1)[1] for o in data.objects] == ["1", "2"]
    assert data.report.problems == []
    assert [r.origin for r in crops_from_yolo(root)] == [o.source for o in data.objects]


def test_a_negative_width_is_reported_as_negative_not_as_clipped(tmp_path):
    from headserve.client import BadInputError
    from headserve.client.crops import crops_from_yolo
    from headserve.train.dataset import read_yolo

    root = _dataset(tmp_path, {"x": "0 0.5 0.5 -0.2 0.3\n"}, {"x": (64, 64)})
    data = read_yolo(root)
    assert data.objects == []
    assert data.report.counts == {"negative size": 1, "empty class": 2}
    assert "box width -0.2 and height 0.3: a size is negative" in data.report.problems[0]
    assert not any("clipped" in p for p in data.report.problems)
    with pytest.raises(BadInputError, match=r"x\.txt:1: box width -0.2 .* negative"):
        list(crops_from_yolo(root))


def test_training_and_classify_yolo_read_the_same_boxes_from_the_same_lines(tmp_path):
    from headserve.client.crops import crops_from_yolo
    from headserve.train.dataset import read_yolo

    lines = ("0 0.5 0.5 0.4 0.4\n"  # a box
             "1 1.1 0.5 0.4 0.4\n"  # outside [0, 1]: clipped by both
             "0 0.1 0.1 0.5 0.2 0.3 0.9\n"  # a polygon: its bounding box
             "1 0.999 0.5 0.6 0.3\n")  # reaches past the edge
    root = _dataset(tmp_path, {"x": lines, "y": "1 0.5 0.5 0.9 0.9\n"}, {"x": (80, 50), "y": (33, 47)})
    trained = [(o.source, o.class_id, o.box) for o in read_yolo(root).objects]
    served = [(r.origin, r.class_id, r.box_xyxy) for r in crops_from_yolo(root)]
    assert served == trained and len(trained) == 5


def test_a_line_training_skips_is_refused_by_the_client_with_file_and_line(tmp_path):
    from headserve.client import BadInputError
    from headserve.client.crops import crops_from_yolo
    from headserve.train.dataset import read_yolo

    root = _dataset(tmp_path, {"x": "0 0.5 0.5 0.4 0.4\n0 0.5 0.5 0.01 0.4\n"}, {"x": (64, 64)})
    assert read_yolo(root).report.counts["degenerate box"] == 1
    with pytest.raises(BadInputError, match=r"x\.txt:2: box is 0\.64x25\.6 pixels of the 64x64 image"):
        list(crops_from_yolo(root))


def test_background_crops_are_never_drawn_from_an_image_too_small_to_crop(tmp_path):
    from headserve.train.dataset import background_objects, load_crop, read_yolo

    root = _dataset(tmp_path, {"big": "0 0.2 0.2 0.2 0.2\n1 0.8 0.8 0.2 0.2\n"},
                    {"big": (120, 120), "dot": (1, 1), "thin": (200, 20)})
    data = read_yolo(root)
    assert sorted(p.name for p in data.images) == ["big.png", "dot.png", "thin.png"]
    bg = background_objects(data, per_image=3, class_id=2)
    assert {o.image.name for o in bg} == {"big.png"}
    assert all(load_crop(o).size[0] >= 4 for o in bg)  # every drawn crop loads
    skipped = [p for p in data.report.problems if "background crops need" in p]
    assert len(skipped) == 2 and any("dot.png: image is 1x1 pixels" in p for p in skipped)
    assert data.report.counts["too small for background"] == 2


@pytest.mark.parametrize("names, match", [
    ("names: ['cat', \"do\\ng\"]\n", r"class 1 name 'do\\ng' from .*data\.yaml 'names' contains a control"),
    ("names: ['cat', \"a\\tb\"]\n", r"class 1 name 'a\\tb' .*control character \(U\+0009\)"),
    ("names: {0: cat, 1: cat}\n", r"class 1 name 'cat' .* repeats class 0"),
    ("names: ['cat', ' ']\n", r"class 1 name ' ' .* is empty or only spaces"),
])
def test_a_dataset_class_name_that_would_corrupt_a_labels_file_is_refused_naming_it(tmp_path, names, match):
    from headserve.train.dataset import read_class_names

    (tmp_path / "data.yaml").write_text(names)
    with pytest.raises(ClassNameError, match=match):
        read_class_names(tmp_path)


def test_class_names_with_a_colon_or_unicode_are_accepted_and_a_classes_txt_bom_is_not_a_name(tmp_path):
    from headserve.train.dataset import read_class_names

    (tmp_path / "classes.txt").write_bytes("\ufeffsign:stop\nüber-Ünit\n".encode("utf-8"))
    assert read_class_names(tmp_path) == ["sign:stop", "über-Ünit"]


def test_a_legacy_sidecar_class_name_with_a_newline_is_refused_naming_the_sidecar(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from headserve.train.legacy import import_legacy

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 4)).astype(np.float32), np.arange(30) % 3
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=200).fit(x, y)))
    (tmp_path / "old.meta.pkl").write_bytes(pickle.dumps({"labelmap": {0: "a", 1: "b\nc", 2: "d"},
                                                          "embedding_dim": 4}))
    with pytest.raises(ClassNameError, match=r"class 1 name 'b\\nc' from .*old\.meta\.pkl 'classes'"):
        import_legacy(tmp_path / "old.pkl", tmp_path / "out", trust_pickle=True)
    assert not (tmp_path / "out").exists()


def test_export_prompts_can_name_a_class_that_contains_a_colon():
    from headserve.errors import RepositoryError
    from headserve.export.prompts import parse_prompt

    classes = ["sign", "sign:stop", "background"]
    assert parse_prompt("sign:stop:a photo of a stop sign", classes) == (1, "a photo of a stop sign")
    assert parse_prompt("sign:a photo of a sign", classes) == (0, "a photo of a sign")
    with pytest.raises(RepositoryError, match=r"--prompt 'car:a car' must be CLASS:TEXT with CLASS one of"):
        parse_prompt("car:a car", classes)
    with pytest.raises(RepositoryError, match="non-empty prompt text"):
        parse_prompt("background:  ", classes)


def _info(version: str = "2"):
    from headserve.client.discovery import HeadInfo
    from headserve.contract import EncoderIdentity, ServedHead
    from headserve.encoders import get_encoder

    encoder = EncoderIdentity.from_spec(get_encoder("clip:tiny"))
    assert encoder.embedding_dim == 32
    return HeadInfo(ServedHead("h", ("a", "b", "c"), encoder), 8, ("probs", "ood_score"), version=version)


def test_an_answer_from_another_version_or_of_another_width_is_stale():
    from headserve.client.discovery import StaleAnswer, check_answer

    probs = np.full((2, 3), 1 / 3, np.float32)
    check_answer(_info(), "2", {"probs": probs, "ood_score": np.zeros((2, 1), np.float32)})  # fits: no error
    with pytest.raises(StaleAnswer, match="answered by version 3 of 'h', read as version 2"):
        check_answer(_info(), "3", {"probs": probs})
    with pytest.raises(StaleAnswer, match=r"output 'probs' of 'h' has shape \(2, 4\), but version 2 publishes width 3"):
        check_answer(_info(), "2", {"probs": np.zeros((2, 4), np.float32)})
    with pytest.raises(StaleAnswer, match=r"output 'embedding' .* width 32"):
        check_answer(_info(), "2", {"embedding": np.zeros((2, 16), np.float32)})


def test_nan_probabilities_from_the_server_are_refused_naming_the_rows_and_the_fix():
    from headserve.client.discovery import check_answer
    from headserve.client.errors import ServerSideError

    probs = np.full((3, 3), 1 / 3, np.float32)
    probs[1, 2] = np.nan  # what an fp16 graph that overflowed answers in production
    with pytest.raises(ServerSideError, match=r"non-finite probs for 1 of 3 crops \(first row 1\).*at fp32"):
        check_answer(_info(), "2", {"probs": probs})


def test_triton_unknown_model_version_is_model_not_ready_not_a_server_to_retry():
    from tritonclient.utils import InferenceServerException

    from headserve.client.errors import ModelNotReadyError, from_triton

    exc = InferenceServerException("Request for unknown model: 'h' version 1 is not at ready state",
                                   status="StatusCode.UNAVAILABLE")
    assert isinstance(from_triton(exc, "inference on 'h'"), ModelNotReadyError)


def test_the_client_refuses_non_finite_embeddings_before_sending_them():
    from headserve.client import BadInputError
    from headserve.client.inputs import finite_embeddings

    x = np.zeros((3, 4), np.float32)
    x[2, 1] = np.inf
    with pytest.raises(BadInputError, match=r"embeddings for 'p' hold 1 NaN or infinite value\(s\) \(first in row 2\)"):
        finite_embeddings(x, "embeddings for 'p'")
    with pytest.raises(BadInputError, match=r"e hold 2 NaN or infinite value\(s\) \(first in row 0\)") as raised:
        finite_embeddings(np.full((1, 2), np.nan), "e")
    assert isinstance(raised.value, HeadserveError)  # printed as one line by the CLI


def test_local_models_warm_up_float_inputs_with_zeros_that_the_finite_check_accepts():
    from headserve.export.model_config import DataType, ModelDesc, Runtime, TensorSpec, render

    desc = ModelDesc("h_head", (TensorSpec("embedding", DataType.TYPE_FP32, (32,)),),
                     (TensorSpec("probs", DataType.TYPE_FP32, (3,)),), max_batch_size=8)
    local = render(desc, Runtime.LOCAL).model_warmup
    assert [(w.inputs["embedding"].zero_data, w.inputs["embedding"].random_data) for w in local] == [(True, False)]
    production = render(desc, Runtime.PRODUCTION).model_warmup
    assert production and all(w.inputs["embedding"].random_data for w in production)  # unchanged there
