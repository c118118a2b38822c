"""Datasets that used to train the wrong thing, or fail with a traceback: each is one clear line, or a reported skip."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from headserve.app.cli import EXIT_BAD_INPUT, main
from headserve.errors import DatasetError
from headserve.train.dataset import read_yolo

HEADSERVE = str(Path(sys.executable).with_name("headserve"))
NAMES = "names:\n  0: digit_0\n  1: digit_1\n  2: digit_2\n  3: digit_3\n  4: digit_4\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headserve.train.synth import SynthConfig, build_digits_dataset

    return build_digits_dataset(tmp_path_factory.mktemp("small") / "ds", SynthConfig(num_images=8))


@pytest.fixture
def dataset(small: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small dataset for a test to change."""
    return Path(shutil.copytree(small, tmp_path / "ds"))


def train(*args: str) -> tuple[int, list[str]]:
    """`headserve train ARGS` through the console entry point in this process: (status, stderr lines)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["train", *args])
    return status, [line for line in err.getvalue().splitlines() if line.strip()]


def test_images_sharing_a_stem_are_reported_naming_every_image_and_skipped(dataset: Path):
    Image.new("RGB", (128, 128), (200, 30, 30)).save(dataset / "images" / "img_0000.jpg")
    Image.new("RGB", (128, 128), (30, 200, 30)).save(dataset / "images" / "img_0000.jpeg")
    data = read_yolo(dataset)
    label = dataset / "labels" / "img_0000.txt"
    (problem,) = [p for p in data.report.problems if "all take this label file" in p]
    assert problem.startswith(f"{label}:1: images img_0000.jpeg, img_0000.jpg, img_0000.png all take this label")
    assert "the 3 images are skipped" in problem
    assert not [p for p in data.images if p.stem == "img_0000"]
    assert not [o for o in data.objects if o.image.stem == "img_0000"]
    assert data.report.counts["label file shared by several images"] == 1
    assert data.report.summary() != "data: no problems found"
    with pytest.raises(DatasetError, match=rf"{label}:1: images img_0000\.jpeg, img_0000\.jpg, img_0000\.png .*strict"):
        read_yolo(dataset, strict=True)


def test_the_client_refuses_images_that_share_a_label_file_naming_them(dataset: Path):
    from headserve.client.crops import crops_from_yolo
    from headserve.client.errors import BadInputError

    Image.new("RGB", (128, 128)).save(dataset / "images" / "img_0003.jpg")
    with pytest.raises(BadInputError, match=r"img_0003\.txt:1: images img_0003\.jpg, img_0003\.png all take"):
        list(crops_from_yolo(dataset))


def test_names_with_gapped_ids_are_refused_by_train_naming_the_missing_ids(dataset: Path, tmp_path: Path):
    (dataset / "data.yaml").write_text("names:\n  0: zero\n  1: one\n  5: five\n")
    done = subprocess.run([HEADSERVE, "train", str(dataset), "--out", str(tmp_path / "h"), "--encoder", "clip:tiny"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"headserve train: error: {dataset / 'data.yaml'}: 'names' has class ids [0, 1, 5], which are not 0..2 "
        "without gaps (missing 2); a head's classes are numbered from 0 without gaps: renumber the classes and the "
        "class ids of the label lines to match")
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("names, want", [
    ("names:\n  1: one\n  0: zero\n  2: two\n", ["zero", "one", "two"]),  # keys out of order: placed by id
    ("names:\n  '0': zero\n  '1': one\n", ["zero", "one"]),  # quoted ids
    ("names: [zero, one]\n", ["zero", "one"]),
])
def test_names_as_a_mapping_are_placed_by_their_ids(names: str, want: list[str], tmp_path: Path):
    from headserve.train.dataset import read_class_names

    (tmp_path / "data.yaml").write_text(names)
    assert read_class_names(tmp_path) == want


def test_names_keyed_by_something_other_than_ids_are_refused(tmp_path: Path):
    from headserve.train.dataset import read_class_names

    (tmp_path / "data.yaml").write_text("names:\n  cat: 0\n  dog: 1\n")
    with pytest.raises(DatasetError, match=r"'names' has keys \['cat', 'dog'\], which are not all class ids"):
        read_class_names(tmp_path)


def test_a_latin_1_data_yaml_is_one_line_saying_to_save_it_as_utf8(dataset: Path, tmp_path: Path):
    (dataset / "data.yaml").write_bytes("names:\n  0: caf\u00e9\n  1: th\u00e9\n".encode("latin-1"))
    status, err = train(str(dataset), "--out", str(tmp_path / "h"), "--encoder", "clip:tiny")
    assert status == EXIT_BAD_INPUT
    assert err == [f"headserve train: error: {dataset / 'data.yaml'}: does not read as UTF-8 text (byte 0xe9 at "
                   "offset 15: invalid continuation byte); save it as UTF-8"]


def test_a_latin_1_classes_txt_gets_the_same_line(tmp_path: Path):
    from headserve.train.dataset import read_class_names

    (tmp_path / "classes.txt").write_bytes("caf\u00e9\nth\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"classes\.txt: does not read as UTF-8 text .*save it as UTF-8"):
        read_class_names(tmp_path)


@pytest.mark.parametrize("kind", [("--hidden", "logreg"), ("--hidden", "32"), ("--hidden", "32", "--profile", "arcface"),
                                  ("--select",)], ids=["logreg", "mlp", "arcface", "select"])
def test_a_dataset_without_labels_is_one_line_naming_it_for_every_head_kind(kind, dataset: Path, tmp_path: Path):
    shutil.rmtree(dataset / "labels")
    (dataset / "labels").mkdir()
    status, err = train(str(dataset), "--out", str(tmp_path / "h"), "--encoder", "clip:tiny", *kind)
    assert status == EXIT_BAD_INPUT
    assert err == [f"headserve train: error: {dataset}: no labelled objects: 8 image(s) under images/ but no label "
                   "line gives a box (0 label file(s) under labels/); label the images: labels/<image name>.txt with "
                   "one 'class cx cy w h' line per object"]
    assert not (tmp_path / "h").exists()


def test_a_dataset_whose_every_label_line_is_skipped_names_why(dataset: Path, tmp_path: Path):
    for label in (dataset / "labels").glob("*.txt"):
        label.write_text("9 0.5 0.5 0.2 0.2\n")  # a class id that names no class
    done = subprocess.run([HEADSERVE, "train", str(dataset), "--out", str(tmp_path / "h"), "--encoder", "clip:tiny",
                           "--hidden", "logreg"], capture_output=True, text=True, timeout=240)
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in done.stderr
    assert f"{dataset}: no labelled objects:" in done.stderr and "skipped: 8 class out of range" in done.stderr
