"""A split that data.yaml declares (Ultralytics `train:`/`val:` folders) is the split `headserve train` uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from headserve.errors import DatasetError
from headserve.train.dataset import read_declared_split

HEADSERVE = str(Path(sys.executable).with_name("headserve"))
NAMES = "names:\n  0: digit_0\n  1: digit_1\n  2: digit_2\n  3: digit_3\n  4: digit_4\n"
VAL_IMAGES = 5  # of 16: the images data.yaml declares as val


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits dataset in the Ultralytics layout: images/{train,val}, labels/{train,val}, data.yaml naming both."""
    from headserve.train.synth import SynthConfig, build_digits_dataset

    root = build_digits_dataset(tmp_path_factory.mktemp("ultra") / "pets", SynthConfig(num_images=16))
    for kind in ("images", "labels"):
        for side in ("train", "val"):
            (root / kind / side).mkdir()
    for i, image in enumerate(sorted(p for p in (root / "images").iterdir() if p.is_file())):
        side = "val" if i < VAL_IMAGES else "train"
        image.rename(root / "images" / side / image.name)
        label = root / "labels" / image.with_suffix(".txt").name
        label.rename(root / "labels" / side / label.name)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\n{NAMES}")
    return root


def _lines(folder: Path) -> int:
    return sum(len(p.read_text().split("\n")) - p.read_text().split("\n").count("") for p in folder.glob("*.txt"))


def test_train_fits_on_the_declared_train_images_and_measures_on_the_declared_val_images(ultralytics: Path,
                                                                                          tmp_path: Path):
    out = tmp_path / "head"
    done = subprocess.run([HEADSERVE, "train", str(ultralytics), "--out", str(out), "--encoder", "clip:tiny",
                           "--no-background", "--epochs", "3", "--hidden", "16", "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    n_val_objects, n_train_objects = _lines(ultralytics / "labels" / "val"), _lines(ultralytics / "labels" / "train")
    assert meta["metrics"]["n_test"] == n_val_objects
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] == n_train_objects
    said = (f"split: as data.yaml declares it: train on images/train ({n_train_objects} crops), test on val: "
            f"images/val ({n_val_objects} crops); validation (early stopping, calibration, OOD threshold): 20% of "
            "the training images, drawn by source image (seed 42)")
    assert said in done.stdout.splitlines()
    report = (tmp_path / "head.report" / "report.md").read_text()
    assert f"- {said}" in report.splitlines()
    # the report's wording: foreground-only OOD share named so, class groups not called "head"/"tail"
    assert 0.0 <= meta["metrics"]["ood_flagged_test_fg"] <= 1.0 and "ood_flagged_test" not in meta["metrics"]
    assert "| ood_flagged_test_fg |" in report and "frequent:" in report and "tail" not in report
    assert report.startswith("# Head `pets`\n\n**untrained encoder (random weights): numbers mean nothing**")
    assert meta["name"] == "pets" and "head name: pets (the dataset folder's name" in done.stdout
    assert "note: untrained encoder (random weights): numbers mean nothing" in done.stdout


def test_a_data_yaml_without_train_and_val_declares_no_split(tmp_path: Path):
    (tmp_path / "data.yaml").write_text(NAMES)
    assert read_declared_split(tmp_path) == {}


def test_a_split_declared_on_one_side_only_is_refused_naming_the_missing_side(tmp_path: Path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(f"train: images/train\n{NAMES}")
    with pytest.raises(DatasetError, match=r"data\.yaml: declares train but no 'val' folder; declare both"):
        read_declared_split(tmp_path)


def test_a_path_naming_another_folder_is_refused_since_train_and_val_would_be_read_from_the_wrong_root(tmp_path: Path):
    other = tmp_path / "elsewhere"
    (other / "images" / "train").mkdir(parents=True)
    (other / "images" / "val").mkdir(parents=True)
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "images" / "val").mkdir(parents=True)
    (ds / "data.yaml").write_text(f"path: ../elsewhere\ntrain: images/train\nval: images/val\n{NAMES}")
    with pytest.raises(DatasetError, match=r"path: '\.\./elsewhere' is the folder .*elsewhere, not .*ds where this "
                                           r"data\.yaml sits; pass that folder as the dataset"):
        read_declared_split(ds)


@pytest.mark.parametrize("path_value", [".", "{root}"])
def test_a_path_naming_the_dataset_root_itself_is_honoured(tmp_path: Path, path_value: str):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(f"path: {path_value.format(root=tmp_path)}\ntrain: images/train\n"
                                        f"val: images/val\n{NAMES}")
    assert read_declared_split(tmp_path) == {"train": ((tmp_path / "images" / "train").resolve(),),
                                             "val": ((tmp_path / "images" / "val").resolve(),)}


def test_a_path_naming_no_folder_here_warns_and_reads_relative_to_the_dataset_root(tmp_path: Path):
    from headserve.train.dataset import DatasetPathWarning

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(f"path: coco8\ntrain: images/train\nval: images/val\n{NAMES}")
    with pytest.warns(DatasetPathWarning, match=r"path: 'coco8' is not a folder here; train: and val: are read "
                                                r"relative to"):
        assert set(read_declared_split(tmp_path)) == {"train", "val"}


def test_a_declared_folder_that_does_not_exist_is_refused_naming_the_key_and_value(tmp_path: Path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(f"train: images/train\nval: images/valid\n{NAMES}")
    with pytest.raises(DatasetError, match=r"val: 'images/valid' is not a folder under"):
        read_declared_split(tmp_path)


def test_a_declared_val_folder_without_labelled_images_is_refused_before_training(ultralytics: Path, tmp_path: Path):
    import shutil

    data = Path(shutil.copytree(ultralytics, tmp_path / "ds"))
    for label in (data / "labels" / "val").glob("*.txt"):
        label.write_text("")
    done = subprocess.run([HEADSERVE, "train", str(data), "--out", str(tmp_path / "h"), "--encoder", "clip:tiny",
                           "--no-background", "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"headserve train: error: {data / 'data.yaml'}: val: images/val holds 0 usable labelled image(s); a declared "
        "split needs at least 1 there")
    assert not (tmp_path / "h").exists()
