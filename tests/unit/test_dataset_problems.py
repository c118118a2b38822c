"""Bad YOLO data is reported with file and line, never learned from silently; --strict makes it an error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from headserve.errors import DatasetError
from headserve.train.dataset import _overlaps, background_objects, read_yolo
from headserve.train.split import group_split

BAD = Path(__file__).resolve().parents[1] / "assets" / "yolo_bad"
IMG1 = BAD / "labels" / "img1.txt"


@pytest.fixture(scope="module")
def report():
    return read_yolo(BAD).report


def _problem(report, needle: str) -> str:
    hits = [p for p in report.problems if needle in p]
    assert hits, f"no problem mentions {needle!r}: {report.problems}"
    return hits[0]


def test_class_id_out_of_range_is_reported_with_file_and_line(report):
    assert f"{IMG1}:2" in _problem(report, "class id 7 is outside 0..2")


def test_malformed_line_is_reported_with_file_and_line(report):
    assert _problem(report, "abc").startswith(f"{IMG1}:3")


def test_polygon_with_fewer_than_three_points_is_reported_with_file_and_line(report):
    assert _problem(report, "polygon has 1 points").startswith(f"{IMG1}:4")


def test_coordinates_outside_the_image_are_clipped_and_counted(report):
    assert _problem(report, "clipped").startswith(f"{IMG1}:5")
    assert report.counts["coordinates clipped"] == 1


def test_reject_outside_skips_the_line_instead_of_clipping_it():
    data = read_yolo(BAD, reject_outside=True)
    assert f"{IMG1}:5" not in {o.source for o in data.objects}
    assert _problem(data.report, "line skipped (--reject-outside)").startswith(f"{IMG1}:5")
    assert data.report.counts["coordinates rejected"] == 1


def test_odd_number_of_coordinates_is_reported_as_malformed(report):
    assert _problem(report, "expected 'cls cx cy w h'").startswith(f"{IMG1}:7")


def test_label_file_without_an_image_is_reported_with_file_and_line(report):
    assert _problem(report, "no image for this label file").startswith(f"{BAD / 'labels' / 'ghost.txt'}:1")


def test_unreadable_image_is_reported_with_its_path(report):
    assert _problem(report, "does not decode").startswith(str(BAD / "images" / "broken.png"))


def test_class_with_no_examples_is_reported_by_id_and_name(report):
    assert "class 2 (bird): has no labelled examples" in report.problems


def test_summary_counts_every_kind_of_skip(report):
    summary = report.summary()
    assert "8 item(s)" in summary and "2 malformed line" in summary and "1 missing image" in summary


def test_good_lines_survive_and_the_polygon_is_cropped_by_its_bounding_box():
    data = read_yolo(BAD)
    sources = sorted(o.source for o in data.objects)
    assert sources == [f"{IMG1}:1", f"{IMG1}:5", f"{IMG1}:6", f"{BAD / 'labels' / 'img2.txt'}:1"]
    poly = next(o for o in data.objects if o.source == f"{IMG1}:6")
    assert poly.box == pytest.approx((0.1 * 48, 0.1 * 48, 0.6 * 48, 0.5 * 48))


def test_strict_mode_turns_the_first_problem_into_an_error_naming_the_line():
    with pytest.raises(DatasetError, match=r"broken\.png: image does not decode.*strict mode"):
        read_yolo(BAD, strict=True)


def test_strict_mode_names_the_bad_label_line(tmp_path: Path):
    shutil.copytree(BAD, tmp_path / "ds")
    (tmp_path / "ds" / "images" / "broken.png").unlink()
    with pytest.raises(DatasetError, match=r"img1\.txt:2: class id 7 is outside 0..2.*strict mode"):
        read_yolo(tmp_path / "ds", strict=True)


def test_missing_class_names_file_is_an_error_that_says_what_to_add(tmp_path: Path):
    shutil.copytree(BAD / "images", tmp_path / "images")
    with pytest.raises(DatasetError, match="neither data.yaml nor classes.txt"):
        read_yolo(tmp_path)


def test_background_crops_overlap_no_labelled_box_and_repeat_with_the_seed():
    data = read_yolo(BAD)
    first = background_objects(data, per_image=3, class_id=3, seed=42)
    assert first and first == background_objects(data, per_image=3, class_id=3, seed=42)
    assert not any(_overlaps(b.box, o.box) for b in first for o in data.objects if o.image == b.image)


def test_group_split_never_puts_one_image_on_both_sides():
    groups = [f"img{i // 3}" for i in range(60)]
    train, test = group_split(groups, 0.2, 42)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in test})
    assert len(test) == 12
