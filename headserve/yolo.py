"""YOLO label files: the one parser, and the one set of rules, that training and the client share.

A label line is a box ``cls cx cy w h`` or a polygon ``cls x1 y1 x2 y2 ...`` (cropped by its bounding
box) in coordinates normalised to [0, 1] of the image *as displayed* (EXIF orientation applied: see
``headserve.preprocess.oriented_size``). Training (``headserve.train.dataset``) reports and skips a bad
line; the client's ``classify --yolo`` refuses it. Both get the same boxes from the same lines, so a crop
the client classifies is the crop training learned from. Torch-free: the client imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
COORD_SLACK = 1e-3  # rounding noise tolerated beyond [0, 1] before a coordinate counts as out of range
MIN_BOX_PIXELS = 2.0  # a box narrower or lower than this after clipping holds nothing to crop


@dataclass(frozen=True)
class LabelBox:
    """One labelled object of a label file."""

    class_id: int  # the line's class index
    box: tuple[float, float, float, float]  # pixels (x1, y1, x2, y2), clipped to the image
    where: str  # "labels/x.txt:3"


@dataclass(frozen=True)
class LabelProblem:
    """Something wrong with a line; ``skipped`` says whether the line yields no box (else it was clipped)."""

    kind: str  # short category for counting: "malformed line", "negative size", ...
    where: str  # "labels/x.txt:3"
    message: str  # what is wrong and what to do
    skipped: bool = True  # False: the line still yields a (clipped) box


LabelItem = Union[LabelBox, LabelProblem]


def box_corners(cx: float, cy: float, w: float, h: float) -> tuple[list[float], list[float]]:
    """A YOLO box's (cx, cy, w, h) as the x and y coordinates of its corners, still normalised."""
    return [cx - w / 2, cx + w / 2], [cy - h / 2, cy + h / 2]


def to_pixels(xs: Sequence[float], ys: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """The bounding box (x1, y1, x2, y2) in pixels of normalised points, clipped to the image.

    The one conversion training and the client share: a detection reaching past the image edge describes
    the visible part, which is what training cropped, so every caller gets the box training would cut.
    """
    return (max(0.0, min(xs)) * width, max(0.0, min(ys)) * height,
            min(1.0, max(xs)) * width, min(1.0, max(ys)) * height)


def images_under(image_dir: Path) -> list[Path]:
    """Image files of a dataset, sorted, by suffix."""
    return sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def label_path_for(root: Path, image_dir: Path, image: Path) -> Path:
    """``ROOT/labels/<same relative path>.txt`` for an image under ``image_dir``."""
    return root / "labels" / image.relative_to(image_dir).with_suffix(".txt")


def shared_label_files(root: Path, image_dir: Path, images: list[Path]) -> dict[Path, list[Path]]:
    """Label files that several images take (``img_0.png`` and ``img_0.jpg`` both read ``labels/img_0.txt``),
    each with those images; only label files that exist. Their boxes cannot be tied to one picture, so
    training skips such images and the client refuses them."""
    takers: dict[Path, list[Path]] = {}
    for image in images:
        takers.setdefault(label_path_for(root, image_dir, image), []).append(image)
    return {label: group for label, group in takers.items() if len(group) > 1 and label.is_file()}


def shared_label_message(label: Path, images: list[Path]) -> str:
    """What is wrong with a label file several images take, and what to do: one text for training and client."""
    return (f"images {', '.join(p.name for p in images)} all take this label file, so its boxes cannot be tied "
            "to one picture; rename the images so that each has its own label file")


def read_label_file(path: Path, width: int, height: int, num_classes: Optional[int] = None,
                    reject_outside: bool = False) -> Iterator[LabelItem]:
    """Every box and every problem of one label file, in line order.

    ``width`` and ``height`` are the displayed image's size. ``num_classes`` (when known) bounds class
    ids. Coordinates outside [0, 1] are clipped (a problem with ``skipped=False``, then the box), or with
    ``reject_outside`` the line is skipped. The file is read as UTF-8 with an optional byte-order mark.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        yield LabelProblem("unreadable labels", f"{path}:1",
                           f"label file does not read as UTF-8 text ({exc.__class__.__name__}: {exc}); "
                           "save it as UTF-8")
        return
    for lineno, raw in enumerate(text.splitlines(), start=1):
        yield from _read_line(raw.strip(), f"{path}:{lineno}", width, height, num_classes, reject_outside)


def _read_line(line: str, where: str, width: int, height: int, num_classes: Optional[int],
               reject_outside: bool) -> Iterator[LabelItem]:
    if not line:
        return
    parts = line.split()
    try:
        cls_id = int(parts[0])
        coords = [float(v) for v in parts[1:]]
    except ValueError:
        yield LabelProblem("malformed line", where, f"{line!r} is not 'class x y ...' numbers; fix the label line")
        return
    if cls_id < 0 or (num_classes is not None and cls_id >= num_classes):
        upper = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        yield LabelProblem("class out of range", where, f"class id {cls_id} is outside {upper}")
        return
    if not all(v == v and abs(v) != float("inf") for v in coords):
        yield LabelProblem("malformed line", where, f"coordinates are not finite numbers: {line!r}")
        return
    if len(coords) == 4:
        cx, cy, w, h = coords
        if w < 0 or h < 0:
            yield LabelProblem("negative size", where, f"box width {w:g} and height {h:g}: a size is negative; "
                                                      "a box line is 'cls cx cy w h' with w and h above 0")
            return
        xs, ys = box_corners(cx, cy, w, h)
    elif len(coords) >= 6 and len(coords) % 2 == 0:
        xs, ys = coords[0::2], coords[1::2]
    elif len(coords) % 2 == 0 and len(coords) > 0:
        yield LabelProblem("short polygon", where, f"polygon has {len(coords) // 2} points; at least 3 are needed")
        return
    else:
        yield LabelProblem("malformed line", where,
                           f"expected 'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', got {line!r}")
        return
    outside = any(v < -COORD_SLACK or v > 1 + COORD_SLACK for v in coords)
    if outside and reject_outside:
        yield LabelProblem("coordinates rejected", where, "coordinates outside [0, 1]; line skipped (--reject-outside)")
        return
    if outside:
        yield LabelProblem("coordinates clipped", where, "coordinates outside [0, 1] were clipped to the image",
                           skipped=False)
    x1, y1, x2, y2 = to_pixels(xs, ys, width, height)
    if x2 - x1 < MIN_BOX_PIXELS or y2 - y1 < MIN_BOX_PIXELS:
        yield LabelProblem("degenerate box", where,
                           f"box is {max(0.0, x2 - x1):.3g}x{max(0.0, y2 - y1):.3g} pixels of the {width}x{height} "
                           f"image after clipping; at least {MIN_BOX_PIXELS:g} pixels each way are needed")
        return
    yield LabelBox(cls_id, (x1, y1, x2, y2), where)
