"""`headserve classify` / `headserve gate` refuse bad arguments as one line with status 2, before connecting."""

import pytest
from PIL import Image

from headserve.app.cli import main


@pytest.mark.parametrize("argv, message", [
    (["classify", "--head", "h"], "no crops given; pass image files or --yolo DIR"),
    (["gate", "--head", "h", "--target", "digit_1"], "no crops given"),
    (["classify", "--head", "h", "--yolo", "/nonexistent/ds"], "/nonexistent/ds/images does not exist"),
])
def test_missing_crops_are_one_line_errors_with_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_malformed_per_class_threshold_is_refused_naming_it(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    assert main(["classify", "--head", "h", "--class-confidence", "digit_1:0.8", str(img)]) == 2
    assert "--class-confidence 'digit_1:0.8' is not CLASS=P" in capsys.readouterr().err


def test_image_files_and_a_yolo_dataset_together_are_refused(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    assert main(["classify", "--head", "h", "--yolo", str(tmp_path), str(img)]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_directory_passed_as_a_crop_is_named_as_a_directory_with_what_to_pass_instead(tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    Image.new("RGB", (40, 40)).save(crops / "a.png")
    assert main(["classify", "--head", "h", "--url", "127.0.0.1:1", str(crops)]) == 2
    err = capsys.readouterr().err
    assert f"crop image {crops} is a directory, not an image file; pass the image files in it" in err
    assert "--yolo DIR" in err and len(err.splitlines()) == 1
    (crops / "images").mkdir()
    (crops / "labels").mkdir()
    assert main(["classify", "--head", "h", "--url", "127.0.0.1:1", str(crops / "a.png"), str(crops)]) == 2
    assert f"holding a YOLO dataset (images/ + labels/); pass --yolo {crops}" in capsys.readouterr().err
    assert main(["gate", "--head", "h", "--target", "x", "--url", "127.0.0.1:1", str(tmp_path / "gone.png")]) == 2
    assert f"crop image {tmp_path / 'gone.png'} does not exist; check the path" in capsys.readouterr().err


def test_an_output_that_failed_before_any_result_leaves_no_partial_file_to_resume(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(img)
    out = tmp_path / "out.jsonl"
    # No server listens on port 1: the first call fails, nothing was classified.
    assert main(["classify", "--head", "h", "--url", "127.0.0.1:1", "--timeout", "2", "--output", str(out),
                 str(img)]) == 2
    err = capsys.readouterr().err
    assert "--resume" not in err and not (tmp_path / "out.jsonl.partial").exists() and not out.exists()
