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
