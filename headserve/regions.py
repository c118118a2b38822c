"""Region embeddings: every box of an image pooled from one encoder pass over the whole image.

The crop path resizes each box to the encoder's input and runs the encoder once per box. The region
path letterboxes the whole image to ``resolution`` x ``resolution`` (long side to ``resolution``,
padded right and below), runs the encoder once, and pools each box from the grid of patch tokens it
returns. This module is the torch-free half that the client, training and the tests share:

- ``RegionSpec``: the mode's settings, recorded in an encoder's identity (``EncoderIdentity.region``),
  so a head trained on pooled region features is never served on crop embeddings, nor the reverse.
- ``Letterbox`` and ``letterbox_pixels``: the geometry and the uint8 frame the encoder graph receives.
- ``check_boxes``: boxes from the caller, clipped to the image (and reported) or refused by index.
- ``reference_pool``: the pooling written plainly in numpy, which the torch module and the exported
  graph are tested against.

Pooling: ``masked-mean``, the mean of the patch tokens a box covers, each weighted by the fraction of
that patch's area the box covers (the mean of the piecewise-constant token map over the box). It is
chosen over RoI Align because it is exact and the same everywhere: two separable overlap vectors and
one matrix product, with no sampling ratio or pixel-offset convention to disagree on (ONNX RoiAlign,
torchvision and TensorRT have differed on both), a box smaller than one patch still pools that patch's
token, and its numpy reference is a plain loop over patches.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from headserve.errors import ConfigError, RegionBoxError

POOLINGS = ("masked-mean",)  # how a box becomes one vector from the patch grid; see the module docstring
# The long side a whole image is resized to. 448 px is twice the 224 px crop: at patch 16 a 28 x 28 grid
# (784 tokens, about 4x a crop's 196, about 4.4x its compute with attention's quadratic term), where a
# 1280 px frame's patch covers about 46 source pixels, so a 50 px object still owns a patch of its own.
DEFAULT_RESOLUTION = 448
# The ImageNet mean as uint8: padding normalises to about zero under DINOv3/DINOv2 statistics, so the
# letterbox border carries as little signal as a constant can.
DEFAULT_PAD = (124, 116, 104)
LETTERBOX_INTERPOLATIONS = ("bilinear", "bicubic")
MODES = ("crop", "region")  # the two encoder modes: one pass per box, or one pass per image


@dataclass(frozen=True)
class RegionSpec:
    """How a region encoder turns an image and its boxes into embeddings; part of the encoder's identity."""

    resolution: int = DEFAULT_RESOLUTION  # side of the square letterboxed frame; a multiple of patch_size
    pooling: str = "masked-mean"  # one of POOLINGS
    patch_size: int = 16  # the backbone's patch side in pixels (DINOv3 16, DINOv2 14)
    pad_value: tuple[int, int, int] = DEFAULT_PAD  # RGB uint8 fill of the letterbox border
    interpolation: str = "bilinear"  # PIL filter of the letterbox resize, one of LETTERBOX_INTERPOLATIONS

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError.bad_value("pooling", repr(self.pooling), f"is not one of {', '.join(POOLINGS)}")
        if self.patch_size < 1:
            raise ConfigError.bad_value("patch_size", self.patch_size, "must be a positive number of pixels")
        if self.resolution < self.patch_size or self.resolution % self.patch_size:
            raise ConfigError.bad_value(
                "resolution", self.resolution,
                f"must be a positive multiple of the encoder's patch size {self.patch_size} (e.g. "
                f"{default_resolution(224, self.patch_size)})")
        if len(self.pad_value) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.pad_value):
            raise ConfigError.bad_value("pad_value", self.pad_value, "must be three whole numbers in 0..255 (RGB)")
        if self.interpolation not in LETTERBOX_INTERPOLATIONS:
            raise ConfigError.bad_value("interpolation", repr(self.interpolation),
                                        f"is not one of {', '.join(LETTERBOX_INTERPOLATIONS)}")

    @property
    def grid(self) -> int:
        """Patches per side of the frame."""
        return self.resolution // self.patch_size

    @property
    def label(self) -> str:
        """How messages name the mode, e.g. ``region (masked-mean, 448 px, patch 16)``."""
        return f"region ({self.pooling}, {self.resolution} px, patch {self.patch_size})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pad_value"] = list(self.pad_value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "region spec") -> "RegionSpec":
        """Read ``to_dict``'s form; a field this headserve does not know, or a missing one, is refused: either
        would pool boxes other than the way the head was trained."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: {data!r} is not a mapping of region fields")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ConfigError(f"{origin}: region fields {'unknown: ' + ', '.join(unknown) if unknown else ''}"
                              f"{'; ' if unknown and missing else ''}{'missing: ' + ', '.join(missing) if missing else ''}"
                              "; upgrade headserve to the version that wrote it")
        try:
            return cls(resolution=int(data["resolution"]), pooling=str(data["pooling"]),
                       patch_size=int(data["patch_size"]),
                       pad_value=tuple(int(v) for v in data["pad_value"]),  # type: ignore[arg-type]
                       interpolation=str(data["interpolation"]))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise ConfigError(f"{origin}: {exc}") from None
            raise ConfigError(f"{origin}: {dict(data)} does not read: {exc}") from None

    def to_json(self) -> str:
        """The one text form (config parameters, fingerprints, cache keys): sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, origin: str = "region spec") -> "RegionSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{origin}: {text[:80]!r} is not JSON ({exc})") from None
        return cls.from_dict(data, origin)


def default_resolution(crop_size: int, patch_size: int) -> int:
    """Twice the encoder's crop side, rounded up to whole patches: 448 for 224 px encoders at patch 16 or 14."""
    return -(-2 * crop_size // patch_size) * patch_size


def mode_label(region: RegionSpec | None) -> str:
    """``crop`` or the region spec's label: how messages name an encoder's mode."""
    return "crop" if region is None else region.label


# ---------------------------------------------------------------------------------------------
# Letterbox geometry


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``width`` x ``height`` lands in the square frame: top-left, scaled, padded right/below."""

    width: int  # the original image's size in pixels
    height: int
    content_width: int  # the resized image inside the frame: the long side is the resolution
    content_height: int
    resolution: int  # the frame's side

    @classmethod
    def of(cls, width: int, height: int, region: RegionSpec) -> "Letterbox":
        if width < 1 or height < 1:
            raise RegionBoxError(f"an image of {width}x{height} pixels has no area to pool boxes from")
        scale = region.resolution / max(width, height)
        return cls(width, height, max(1, round(width * scale)), max(1, round(height * scale)), region.resolution)

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) frame pixels per image pixel; they differ from each other only by rounding of the content size."""
        return self.content_width / self.width, self.content_height / self.height

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) image-pixel boxes -> float32 (K, 4) boxes in pixels of the frame (the ``boxes`` tensor)."""
        sx, sy = self.scale
        return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])).astype(np.float32)


def letterbox_pixels(image: Any, region: RegionSpec) -> tuple[np.ndarray, Letterbox]:
    """An RGB PIL image -> the uint8 (R, R, 3) frame the region encoder takes, and where the image went in it."""
    from PIL import Image

    box = Letterbox.of(image.width, image.height, region)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[region.interpolation]
    resized = image.convert("RGB").resize((box.content_width, box.content_height), resample)
    frame = np.empty((region.resolution, region.resolution, 3), dtype=np.uint8)
    frame[...] = np.asarray(region.pad_value, dtype=np.uint8)
    frame[:box.content_height, :box.content_width] = np.asarray(resized, dtype=np.uint8)
    return frame, box


# ---------------------------------------------------------------------------------------------
# Box validation


@dataclass(frozen=True)
class ClippedBox:
    """A box that reached past the image's edge and was clipped to it."""

    index: int  # position in the caller's boxes
    original: tuple[float, float, float, float]  # as given
    clipped: tuple[float, float, float, float]  # as pooled

    def describe(self) -> str:
        return f"box {self.index} {_fmt(self.original)} reached past the image edge; clipped to {_fmt(self.clipped)}"


@dataclass(frozen=True)
class CheckedBoxes:
    """Boxes fit to pool: inside the image, positive area, in the caller's order."""

    boxes: np.ndarray  # (K, 4) float64, x1 y1 x2 y2 in image pixels, clipped to the image
    clipped: tuple[ClippedBox, ...] = ()  # the boxes that were clipped, for the caller to report

    def __len__(self) -> int:
        return len(self.boxes)


def _fmt(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def check_boxes(boxes: Any, width: int, height: int, origin: str = "boxes") -> CheckedBoxes:
    """Boxes (x1, y1, x2, y2 in pixels of a ``width`` x ``height`` image) ready to pool.

    A box reaching past an edge is clipped to the image and reported in ``clipped``. A box with no area
    (x2 <= x1 or y2 <= y1), one wholly outside the image, or one with a non-finite coordinate raises
    ``RegionBoxError`` naming its index and value: pooling it would give a vector that means nothing.
    No boxes give an empty result.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RegionBoxError(f"{origin}: not an array of numbers ({exc}); pass (K, 4) rows of x1, y1, x2, y2 "
                             "in pixels") from None
    if arr.size == 0:
        return CheckedBoxes(np.zeros((0, 4), dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise RegionBoxError(f"{origin}: an array of shape {arr.shape} is not (K, 4) rows of x1, y1, x2, y2 in "
                             "pixels")
    out = arr.copy()
    clipped: list[ClippedBox] = []
    limits = np.array([width, height, width, height], dtype=np.float64)
    for i, box in enumerate(arr):
        x1, y1, x2, y2 = (float(v) for v in box)
        where = f"{origin}: box {i} {_fmt(box)}"
        if not np.isfinite(box).all():
            raise RegionBoxError(f"{where} has a coordinate that is not a finite number; send finite pixel "
                                 "coordinates", i, tuple(box))
        if x2 <= x1 or y2 <= y1:
            raise RegionBoxError(f"{where} has no area (x2 <= x1 or y2 <= y1); drop it or send x1 < x2 and y1 < y2",
                                 i, tuple(box))
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise RegionBoxError(f"{where} lies wholly outside the {width}x{height} image; boxes are x1, y1, x2, y2 "
                                 "in pixels of the image they were detected in", i, tuple(box))
        inside = np.clip(box, 0.0, limits)
        if (inside != box).any():
            out[i] = inside
            clipped.append(ClippedBox(i, (x1, y1, x2, y2), tuple(float(v) for v in inside)))  # type: ignore[arg-type]
    return CheckedBoxes(out, tuple(clipped))


# ---------------------------------------------------------------------------------------------
# The reference pooling, written plainly. The torch module computes the same thing with one matrix product.


def reference_pool(tokens: np.ndarray, boxes: np.ndarray, patch_size: int) -> np.ndarray:
    """(Gh, Gw, D) patch tokens and (K, 4) frame-pixel boxes -> (K, D) float64 L2-normalised masked means.

    Each patch (i, j) covers pixels [j p, (j + 1) p) x [i p, (i + 1) p). A box is first clipped to the
    frame; its vector is the sum over patches of (overlap area) x token, divided by the summed overlap. A
    box that covers no area of the frame gets NaN: there is nothing to average, and NaN cannot pass for
    an answer.
    """
    grid_h, grid_w, dim = tokens.shape
    out = np.zeros((len(boxes), dim), dtype=np.float64)
    for k, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x1, x2 = (min(max(v, 0.0), grid_w * patch_size) for v in (box[0], box[2]))
        y1, y2 = (min(max(v, 0.0), grid_h * patch_size) for v in (box[1], box[3]))
        total = 0.0
        acc = np.zeros(dim, dtype=np.float64)
        for i in range(grid_h):
            for j in range(grid_w):
                overlap_x = max(0.0, min(x2, (j + 1) * patch_size) - max(x1, j * patch_size))
                overlap_y = max(0.0, min(y2, (i + 1) * patch_size) - max(y1, i * patch_size))
                area = overlap_x * overlap_y
                if area > 0:
                    acc += area * tokens[i, j].astype(np.float64)
                    total += area
        if total == 0:
            out[k] = np.nan
            continue
        mean = acc / total
        out[k] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out


__all__ = [
    "DEFAULT_PAD", "DEFAULT_RESOLUTION", "LETTERBOX_INTERPOLATIONS", "MODES", "POOLINGS", "CheckedBoxes",
    "ClippedBox", "Letterbox", "RegionSpec", "check_boxes", "default_resolution", "letterbox_pixels",
    "mode_label", "reference_pool",
]
