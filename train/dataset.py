"""YOLO-format datasets: class names, labelled objects, and the crops a head is trained on.

Layout: ``ROOT/images/**/*.{jpg,png,...}`` with a label file per image at the same relative path
under ``ROOT/labels/`` (``.txt``), class names from ``ROOT/data.yaml`` (``names``) or
``ROOT/classes.txt``. A label line is a box ``cls cx cy w h`` or a polygon ``cls x1 y1 x2 y2 ...``
(cropped by its bounding box), in coordinates normalised to [0, 1].

Bad lines are never learned from silently: each is recorded with its file and line in a
``DataReport``; ``strict=True`` turns the first one into a ``DatasetError``.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image

from headserve.class_names import check_class_names
from headserve.errors import DatasetError, HeadserveWarning, ImageDecodeError
from headserve.preprocess import MIN_SIDE, crop_box, load_image, oriented_size
from headserve.yolo import (
    COORD_SLACK,
    IMAGE_SUFFIXES,
    LabelProblem,
    images_under,
    label_path_for,
    read_label_file,
    shared_label_files,
    shared_label_message,
)

__all__ = ["COORD_SLACK", "DECLARED_SPLITS", "IMAGE_SUFFIXES", "DataReport", "LabelledObject", "YoloDataset",
           "background_objects", "load_crop", "read_class_names", "read_declared_split", "read_yolo"]

class DatasetPathWarning(HeadserveWarning):
    """A data.yaml ``path:`` that names no folder on this machine, so train:/val: are read from the dataset root."""


# The data.yaml keys of a declared split (Ultralytics): images to fit on, and images to measure on.
DECLARED_SPLITS = ("train", "val")
# The smallest background crop is this fraction of the image's short side (the largest is 0.4).
BG_MIN_FRACTION, BG_MAX_FRACTION = 0.15, 0.4


@dataclass(frozen=True)
class LabelledObject:
    """One object: which image, which class, where (pixels, x1 y1 x2 y2)."""

    image: Path
    class_id: int
    box: tuple[float, float, float, float]
    source: str  # "file:line" it came from, or "background"


@dataclass
class DataReport:
    """What was skipped or clipped, and why, with file and line."""

    problems: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    strict: bool = False

    def skip(self, kind: str, where: str, message: str) -> None:
        text = f"{where}: {message}"
        if self.strict:
            raise DatasetError(text + " (strict mode: fix the line, or leave strict mode off to skip it)")
        self.problems.append(text)
        self.counts[kind] += 1

    def summary(self) -> str:
        if not self.problems:
            return "data: no problems found"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"data: skipped or clipped {len(self.problems)} item(s): {kinds}"


@dataclass
class YoloDataset:
    root: Path
    names: list[str]
    objects: list[LabelledObject]
    images: list[Path]
    report: DataReport
    declared: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # data.yaml's train/val folders; {}: none


def _read_data_yaml(yaml_path: Path) -> object:
    """data.yaml parsed; a YAML error is one line naming the file and line at fault."""
    import yaml

    try:
        return yaml.safe_load(_utf8_text(yaml_path)) or {}
    except yaml.YAMLError as exc:  # PyYAML's text spans lines (context, caret); keep one line, at the fault
        mark = getattr(exc, "problem_mark", None)
        where = f"{yaml_path}:{mark.line + 1}" if mark is not None else str(yaml_path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise DatasetError(f"{where}: not valid YAML ({problem}); fix that line") from None


def read_class_names(root: Path) -> list[str]:
    yaml_path, txt_path = root / "data.yaml", root / "classes.txt"
    if yaml_path.is_file():
        data = _read_data_yaml(yaml_path)
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            names = _names_by_id(names, yaml_path)
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{yaml_path}: 'names' must be a non-empty list or an index->name mapping")
        return check_class_names(names, f"{yaml_path} 'names'")
    if txt_path.is_file():
        names = [line.strip() for line in _utf8_text(txt_path).splitlines() if line.strip()]
        if names:
            return check_class_names(names, str(txt_path))
        raise DatasetError(f"{txt_path}: no class names in it; write one name per line")
    raise DatasetError(f"{root}: neither data.yaml nor classes.txt found; add one that lists the class names")


def _check_declared_root(root: Path, declared: object, yaml_path: Path) -> None:
    """Refuse a data.yaml whose ``path:`` names another folder than the dataset root it sits in.

    Ultralytics reads ``train:``/``val:`` relative to ``path:``; headserve reads them relative to the folder it
    is given, where the labels are. The two agree when ``path:`` is absent, ``.``, or resolves (absolutely or
    from data.yaml's folder) to the root; when it names another folder, reading relative to the root would
    train on other images than the user meant, so it is refused. A ``path:`` that names no folder here (one
    relative to a training machine's datasets directory, as Ultralytics' own files have) cannot be honoured
    either way and is ignored with a warning.
    """
    if declared in (None, ""):
        return
    where = Path(str(declared)).expanduser()
    target = where if where.is_absolute() else root / where
    if not target.is_dir():
        warnings.warn(DatasetPathWarning(
            f"{yaml_path}: path: {declared!r} is not a folder here; train: and val: are read relative to {root}, "
            "the folder data.yaml sits in"))
        return
    if target.resolve() != root.resolve():
        raise DatasetError(f"{yaml_path}: path: {declared!r} is the folder {target.resolve()}, not {root.resolve()} "
                           "where this data.yaml sits; pass that folder as the dataset (its labels/ beside its "
                           "images/), or remove path: to read train: and val: relative to this one")


def read_declared_split(root: Path) -> dict[str, tuple[Path, ...]]:
    """The folders data.yaml declares for ``train`` and ``val`` (Ultralytics layout), or {} when it declares none.

    Each value is a folder or a list of folders, relative to the dataset root (or absolute). Both keys or
    neither: a split with one side only cannot be honoured, and guessing the other side would be silent.
    """
    yaml_path = root / "data.yaml"
    data = _read_data_yaml(yaml_path) if yaml_path.is_file() else {}
    if not isinstance(data, dict) or not any(k in data for k in DECLARED_SPLITS):
        return {}
    _check_declared_root(root, data.get("path"), yaml_path)
    missing = [k for k in DECLARED_SPLITS if not data.get(k)]
    if missing:
        raise DatasetError(f"{yaml_path}: declares {' and '.join(k for k in DECLARED_SPLITS if k not in missing)} "
                           f"but no {missing[0]!r} folder; declare both train: and val:, or neither to let "
                           "headserve split by source image")
    declared: dict[str, tuple[Path, ...]] = {}
    for key in DECLARED_SPLITS:
        values = data[key] if isinstance(data[key], list) else [data[key]]
        folders = []
        for value in values:
            folder = root / str(value)
            if not folder.is_dir():
                raise DatasetError(f"{yaml_path}: {key}: {value!r} is not a folder under {root} (lists of images in "
                                   f".txt files are not read); point {key}: at the folder of its images")
            folders.append(folder.resolve())
        declared[key] = tuple(folders)
    return declared


def _utf8_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark allowed), as label files are read; anything else is refused."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: does not read as UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                           f"{exc.start}: {exc.reason}); save it as UTF-8") from None


def _names_by_id(names: dict, where: Path) -> list:
    """``names: {0: a, 1: b}`` as a list in id order. The ids must be exactly 0..N-1: a label line's class id
    indexes the head's outputs, so a gap would shift every name after it onto another class's id."""
    try:
        ids = {int(k): v for k, v in names.items()}
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: 'names' has keys {sorted(map(str, names))}, which are not all class ids "
                           "(integers 0..N-1); write 'names' as a list or as id: name pairs") from None
    missing = sorted(set(range(len(ids))) - set(ids))
    if missing or len(ids) != len(names):
        raise DatasetError(
            f"{where}: 'names' has class ids {sorted(ids)}, which are not 0..{len(names) - 1} without gaps "
            f"(missing {', '.join(map(str, missing)) or 'none: an id is written twice'}); a head's classes are numbered "
            "from 0 without gaps: renumber the classes and the class ids of the label lines to match")
    return [ids[i] for i in range(len(ids))]


def read_yolo(root: str | Path, strict: bool = False, reject_outside: bool = False) -> YoloDataset:
    """Read every image and label of a YOLO dataset, reporting bad data with file and line.

    Coordinates outside [0, 1] are clipped to the image (and counted), or with ``reject_outside``
    the whole line is skipped (and counted)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} does not exist or is not a directory; pass the YOLO dataset root")
    names = read_class_names(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir} does not exist; a YOLO dataset keeps its images under images/")
    report = DataReport(strict=strict)
    images = images_under(image_dir)
    ambiguous: set[Path] = set()
    for label_path, group in shared_label_files(root, image_dir, images).items():
        report.skip("label file shared by several images", f"{label_path}:1",
                    shared_label_message(label_path, group) + f"; the {len(group)} images are skipped")
        ambiguous.update(group)
    objects: list[LabelledObject] = []
    usable: list[Path] = []
    for image_path in images:
        if image_path in ambiguous:
            continue
        label_path = label_path_for(root, image_dir, image_path)
        try:
            width, height = oriented_size(image_path)  # labels refer to the displayed (EXIF-rotated) image
        except ImageDecodeError as exc:
            cause = exc.__cause__.__class__.__name__ if exc.__cause__ else exc.__class__.__name__
            report.skip("unreadable image", str(image_path), f"image does not decode ({cause}): {exc}")
            continue
        usable.append(image_path)
        if label_path.is_file():
            objects.extend(_read_labels(label_path, image_path, width, height, len(names), report, reject_outside))
    label_dir = root / "labels"
    stems = {p.relative_to(image_dir).with_suffix("") for p in images}
    if label_dir.is_dir():
        for label_path in sorted(label_dir.rglob("*.txt")):
            if label_path.relative_to(label_dir).with_suffix("") not in stems:
                report.skip("missing image", f"{label_path}:1",
                            f"no image for this label file under {image_dir}; add the image or delete the labels")
    found = Counter(o.class_id for o in objects)
    for cid, name in enumerate(names):
        if found[cid] == 0:
            report.skip("empty class", f"class {cid} ({name})", "has no labelled examples")
    return YoloDataset(root=root, names=names, objects=objects, images=usable, report=report,
                       declared=read_declared_split(root))


def _read_labels(path: Path, image: Path, width: int, height: int, num_classes: int,
                 report: DataReport, reject_outside: bool = False) -> Iterator[LabelledObject]:
    """The label file's boxes by the shared rules (``headserve.yolo``); problems go to the report."""
    for item in read_label_file(path, width, height, num_classes, reject_outside):
        if isinstance(item, LabelProblem):
            report.skip(item.kind, item.where, item.message)
        else:
            yield LabelledObject(image=image, class_id=item.class_id, box=item.box, source=item.where)


def background_objects(dataset: YoloDataset, per_image: int, class_id: int, seed: int = 42) -> list[LabelledObject]:
    """Random crops that overlap no labelled box, drawn with a fixed seed."""
    rng = random.Random(seed)
    by_image: dict[Path, list[tuple[float, float, float, float]]] = {}
    for obj in dataset.objects:
        by_image.setdefault(obj.image, []).append(obj.box)
    out: list[LabelledObject] = []
    for image_path in dataset.images:
        width, height = oriented_size(image_path)
        if BG_MIN_FRACTION * min(width, height) < MIN_SIDE + 1:  # +1: rounding the crop's edges loses a pixel
            dataset.report.skip("too small for background", str(image_path),
                                f"image is {width}x{height} pixels; background crops need a short side of at least "
                                f"{int((MIN_SIDE + 1) / BG_MIN_FRACTION) + 1} pixels, so none are drawn from it")
            continue
        boxes = by_image.get(image_path, [])
        placed = 0
        for _ in range(per_image * 20):
            if placed == per_image:
                break
            side = rng.uniform(BG_MIN_FRACTION, BG_MAX_FRACTION) * min(width, height)
            x1, y1 = rng.uniform(0, width - side), rng.uniform(0, height - side)
            cand = (x1, y1, x1 + side, y1 + side)
            if all(not _overlaps(cand, b) for b in boxes):
                out.append(LabelledObject(image=image_path, class_id=class_id, box=cand, source="background"))
                placed += 1
    return out


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def load_crop(obj: LabelledObject) -> Image.Image:
    """The object's crop as an RGB image; errors name the label line."""
    try:
        return crop_box(load_image(obj.image), obj.box, origin=f"box from {obj.source}")
    except ImageDecodeError as exc:
        raise DatasetError(str(exc)) from None
