"""Crops from detections: YOLO boxes, polygons, datasets, and boxes that miss the image."""

import numpy as np
import pytest
from PIL import Image

from headserve.client import BadInputError, crops_from_yolo, polygon_to_xyxy, yolo_box_to_xyxy
from headserve.client.crops import crop


def test_yolo_box_converts_to_pixels():
    assert yolo_box_to_xyxy((0.5, 0.5, 0.5, 0.25), 200, 100) == pytest.approx((50, 37.5, 150, 62.5))


def test_a_box_or_polygon_past_the_image_edge_converts_to_the_clipped_box_training_crops(tmp_path):
    from headserve.yolo import LabelBox, read_label_file

    box, polygon = (0.95, 0.5, 0.2, 0.2), (-0.1, 0.2, 0.5, -0.3, 1.2, 0.9)
    assert yolo_box_to_xyxy(box, 200, 100) == pytest.approx((170, 40, 200, 60))
    assert polygon_to_xyxy(polygon, 100, 100) == pytest.approx((0, 0, 100, 90))
    labels = tmp_path / "x.txt"
    labels.write_text(f"0 {' '.join(map(str, box))}\n1 {' '.join(map(str, polygon))}\n")
    trained = [item.box for item in read_label_file(labels, 200, 100) if isinstance(item, LabelBox)]
    assert trained == [pytest.approx(yolo_box_to_xyxy(box, 200, 100)), pytest.approx(polygon_to_xyxy(polygon, 200, 100))]


def test_polygon_becomes_its_bounding_box_and_odd_coordinates_are_refused():
    assert polygon_to_xyxy((0.1, 0.2, 0.5, 0.1, 0.3, 0.9), 100, 100) == pytest.approx((10, 10, 50, 90))
    with pytest.raises(BadInputError, match="5 coordinates"):
        polygon_to_xyxy((0.1, 0.2, 0.5, 0.1, 0.3), 100, 100)


def test_box_outside_the_image_is_a_bad_input_naming_the_box():
    image = Image.new("RGB", (64, 48))
    with pytest.raises(BadInputError, match=r"detection 7 \(100, 100, 120, 130\) lies outside the 64x48 image"):
        crop(image, (100, 100, 120, 130), origin="detection 7")
    assert crop(image, (-10, -10, 20, 30)).size == (20, 30)  # partly outside: clipped


def _dataset(root, lines):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.full((50, 100, 3), 128, np.uint8)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")


def test_yolo_dataset_yields_boxes_and_polygons_with_file_and_line(tmp_path):
    _dataset(tmp_path, ["0 0.5 0.5 0.2 0.4", "", "1 0.1 0.1 0.3 0.1 0.2 0.5"])
    refs = list(crops_from_yolo(tmp_path))
    assert [r.class_id for r in refs] == [0, 1]
    assert refs[0].box_xyxy == pytest.approx((40, 15, 60, 35))
    assert refs[1].origin.endswith("a.txt:3")
    assert refs[0].load().size == (20, 20)


def test_malformed_label_line_names_its_file_and_line(tmp_path):
    _dataset(tmp_path, ["0 0.5 0.5 0.2 0.4", "x 0.5 0.5 0.2 0.4"])
    with pytest.raises(BadInputError, match=r"a\.txt:2: 'x 0.5 0.5 0.2 0.4' is not"):
        list(crops_from_yolo(tmp_path))
