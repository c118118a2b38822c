"""Crops from detections: YOLO boxes and polygons (normalised) to pixel boxes, and a YOLO dataset's crops.

Kept apart from ``headserve.train.dataset`` so that the client needs neither the training package nor
pyyaml; the cropping itself is ``headserve.preprocess.crop_box``, the function training crops with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from headserve.client.errors import BadInputError
from headserve.errors import ImageDecodeError
from headserve.preprocess import crop_box, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def yolo_box_to_xyxy(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A YOLO box (cx, cy, w, h), normalised to [0, 1], in pixels (x1, y1, x2, y2)."""
    cx, cy, w, h = (float(v) for v in box)
    return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)


def polygon_to_xyxy(points: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A YOLO polygon (x1, y1, x2, y2, ...), normalised, to its pixel bounding box (as training crops it)."""
    if len(points) < 6 or len(points) % 2:
        raise BadInputError(f"polygon has {len(points)} coordinates; it needs an even number, at least 6")
    xs, ys = [float(v) * width for v in points[0::2]], [float(v) * height for v in points[1::2]]
    return (min(xs), min(ys), max(xs), max(ys))


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

    A malformed label line is a ``BadInputError`` naming file and line: gating a dataset must not skip
    candidates silently.
    """
    root = Path(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise BadInputError(f"{image_dir} does not exist; a YOLO dataset keeps its images under images/")
    for image_path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label_path = root / "labels" / image_path.relative_to(image_dir).with_suffix(".txt")
        if not label_path.is_file():
            continue
        with Image.open(image_path) as im:
            width, height = im.size
        for n, line in enumerate(label_path.read_text().splitlines(), start=1):
            where = f"{label_path}:{n}"
            parts = line.split()
            if not parts:
                continue
            try:
                cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
            except ValueError:
                raise BadInputError(f"{where}: {line!r} is not 'class x y ...' numbers; fix the label line") from None
            if len(coords) == 4:
                box = yolo_box_to_xyxy(coords, width, height)
            else:
                try:
                    box = polygon_to_xyxy(coords, width, height)
                except BadInputError as exc:
                    raise BadInputError(f"{where}: {exc}; a label line is a box (4 numbers) or a polygon") from None
            yield CropRef(image_path, cls, box, where)
