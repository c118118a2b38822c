"""Crops from detections: YOLO boxes and polygons (normalised) to pixel boxes, and a YOLO dataset's crops.

Kept apart from ``headserve.train.dataset`` so that the client needs neither the training package nor
pyyaml; the label parser (``headserve.yolo``) and the cropping (``headserve.preprocess.crop_box``) are
the ones training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from headserve.client.errors import BadInputError
from headserve.errors import ImageDecodeError
from headserve.preprocess import crop_box, load_image, oriented_size
from headserve.yolo import (
    IMAGE_SUFFIXES,
    LabelProblem,
    box_corners,
    images_under,
    label_path_for,
    read_label_file,
    shared_label_files,
    shared_label_message,
    to_pixels,
)

__all__ = ["IMAGE_SUFFIXES", "CropRef", "crop", "crops_from_yolo", "polygon_to_xyxy", "yolo_box_to_xyxy"]


def yolo_box_to_xyxy(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A YOLO box (cx, cy, w, h), normalised to [0, 1], in pixels (x1, y1, x2, y2), clipped to the image as
    training clips it (``headserve.yolo.to_pixels``)."""
    cx, cy, w, h = (float(v) for v in box)
    return to_pixels(*box_corners(cx, cy, w, h), width, height)


def polygon_to_xyxy(points: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A YOLO polygon (x1, y1, x2, y2, ...), normalised, to its pixel bounding box, clipped (as training crops it)."""
    if len(points) < 6 or len(points) % 2:
        raise BadInputError(f"polygon has {len(points)} coordinates; it needs an even number, at least 6")
    return to_pixels([float(v) for v in points[0::2]], [float(v) for v in points[1::2]], width, height)


def crop(image: Image.Image, box_xyxy: Sequence[float], origin: str = "box") -> Image.Image:
    """Crop a pixel box; a box outside the image is a ``BadInputError`` naming ``origin``."""
    try:
        return crop_box(image, box_xyxy, origin)
    except ImageDecodeError as exc:
        raise BadInputError(str(exc)) from exc


@dataclass(frozen=True)
class CropRef:
    """One labelled object of a YOLO dataset, cropped lazily."""

    image: Path  # image file
    class_id: int  # the label file's class index
    box_xyxy: tuple[float, float, float, float]  # pixels
    origin: str  # "labels/x.txt:3"

    def load(self) -> Image.Image:
        try:
            return crop(load_image(self.image), self.box_xyxy, self.origin)
        except ImageDecodeError as exc:
            raise BadInputError(f"{self.origin}: {exc}") from exc

    def to_json(self) -> dict:
        return {"image": str(self.image), "source": self.origin, "class_id": self.class_id,
                "box_xyxy": [round(v, 2) for v in self.box_xyxy]}


def crops_from_yolo(root: str | Path) -> Iterator[CropRef]:
    """Every box and polygon of a YOLO dataset (``images/`` + ``labels/``), in file order.

    Lines are parsed by ``headserve.yolo``, the parser training uses, so each crop is the one training
    would cut from the same line (EXIF orientation, clipping and all). A line training would skip is a
    ``BadInputError`` naming file and line here: gating a dataset must not skip candidates silently.
    Class ids are not bounded here: the client does not read the dataset's class names.
    """
    root = Path(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise BadInputError(f"{image_dir} does not exist; a YOLO dataset keeps its images under images/")
    images = images_under(image_dir)
    for label_path, group in shared_label_files(root, image_dir, images).items():  # training skips these images
        raise BadInputError(f"{label_path}:1: {shared_label_message(label_path, group)}")
    for image_path in images:
        label_path = label_path_for(root, image_dir, image_path)
        if not label_path.is_file():
            continue
        try:
            width, height = oriented_size(image_path)  # labels refer to the displayed (EXIF-rotated) image
        except ImageDecodeError as exc:
            raise BadInputError(f"{label_path}:1: {exc}") from exc
        for item in read_label_file(label_path, width, height):
            if isinstance(item, LabelProblem):
                if item.skipped:
                    raise BadInputError(f"{item.where}: {item.message}")
                continue  # clipped to the image, as training clips it
            yield CropRef(image_path, item.class_id, item.box, item.where)
