"""Crop -> uint8 pixels, identically at training time and on the client.

The encoder graphs take uint8 NHWC pixels already resized to the encoder's input size and do the
rest (cast, scale, normalise, transpose) themselves. Resizing happens here, in PIL, because it is the
step that differs between encoder families; keeping one implementation for both training and the
client is what makes served probabilities equal training-time probabilities.

The arithmetic mirrors each family's reference pipeline: torchvision's ``Resize(int)`` + ``CenterCrop``
(open_clip's eval transform), the DINOv2 processors' shortest side 256 then centre crop 224 at
transformers' truncated offset, and the DINOv3 processor's fixed-size resize.
"""

from __future__ import annotations

import io
from os import PathLike
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headserve.encoders import PreprocessSpec
from headserve.errors import ImageDecodeError, ImageTooLargeError

ImageSource = Union[str, PathLike, bytes, Image.Image, np.ndarray]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# The centre crop's offset for a margin of n pixels: torchvision's CenterCrop rounds n / 2 with
# Python's round (half to even), the transformers image processors truncate it.
_CROP_OFFSET = {
    "round": lambda n: int(round(n / 2.0)),
    "floor": lambda n: n // 2,
}
MIN_SIDE = 4  # a crop narrower than this carries no information an encoder can use


DEFAULT_MAX_PIXELS = 50_000_000  # decoded pixels per image: a 48 MP phone photo passes, a 12000x12000 bomb does not
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees, with or without a mirror).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def load_image(source: ImageSource, origin: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a path, encoded bytes, PIL image or HxWxC uint8 array into an RGB PIL image.

    Files and bytes are decoded fully here (a truncated file fails now, not in a later step) and turned
    upright by their EXIF orientation, because YOLO labels and people both refer to the displayed image.
    A PIL image or array is taken as given: the caller decoded (and perhaps cropped) it already.
    Colour is converted by ``to_rgb``. More than ``max_pixels`` decoded pixels is refused before decoding,
    so one small compressed file cannot take the process's memory. ``origin`` names the source in errors.
    """
    where = origin or (str(source) if isinstance(source, (str, PathLike)) else type(source).__name__)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, where)
    else:
        image = ImageOps.exif_transpose(_decode(source, where, max_pixels))
    image = to_rgb(image, where)
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"image {where} is {image.size[0]}x{image.size[1]} pixels; crops need at least "
            f"{MIN_SIDE}x{MIN_SIDE}. Check the box coordinates that produced it"
        )
    return image


def _open(source: Union[str, PathLike, bytes], where: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count; every failure is an ``ImageDecodeError``."""
    if not isinstance(source, (bytes, str, PathLike)):
        raise ImageDecodeError(f"image {where} is a {type(source).__name__}; pass a path, encoded bytes, "
                               "a PIL image or a uint8 array")
    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if path.is_dir():
                raise ImageDecodeError(f"image {where} is a directory, not an image file; pass the image files "
                                       "in it, one path each")
            if not path.is_file():
                raise ImageDecodeError(f"image {where} does not exist or is not a file; check the path")
            image = Image.open(path)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, above ours unless max_pixels was raised
        raise ImageTooLargeError(f"image {where} is refused by Pillow as a decompression bomb ({exc}); the cap "
                                 f"here is {max_pixels} pixels: resize the image before sending it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(
            f"image {where} does not decode ({exc.__class__.__name__}: {exc}); "
            "pass a JPEG, PNG or other format Pillow reads"
        ) from exc
    w, h = image.size
    if w * h > max_pixels:
        image.close()
        raise ImageTooLargeError(f"image {where} is {w}x{h} = {w * h} pixels, over the cap of {max_pixels} "
                                 "decoded pixels per image; resize it first, or raise max_pixels if the memory "
                                 "is there (about 3 bytes per pixel)")
    return image


def _decode(source: Union[str, PathLike, bytes], where: str, max_pixels: int) -> Image.Image:
    image = _open(source, where, max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"image {where} does not decode ({exc.__class__.__name__}: {exc}); "
            "the file is truncated or corrupt: re-export or re-download it"
        ) from exc
    return image


def oriented_size(source: Union[str, PathLike, bytes], origin: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from the header only.

    This is the size YOLO coordinates are normalised by; ``load_image`` returns an image of this size.
    """
    where = origin or (str(source) if isinstance(source, (str, PathLike)) else type(source).__name__)
    with _open(source, where, max_pixels) as image:
        w, h = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block is what exif_transpose ignores too
            orientation = 1
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """8-bit RGB from any Pillow mode, by the rule registered for the mode (``convert("RGB")`` otherwise).

    16-bit and 32-bit integer greys are scaled to 8 bits (v / 257), float greys are read as [0, 1]; values
    outside those ranges are refused rather than saturated. Transparency (RGBA, LA, palette or grey with a
    transparent entry) is dropped, not composited: each pixel keeps the colour stored under its alpha, as
    ``convert("RGB")`` gives it and as the torchvision and open_clip image loaders do, so a head trained
    from images loaded elsewhere sees the same pixels here.
    """
    if image.mode == "RGB":
        return image
    return _TO_RGB.get(image.mode, _convert_rgb)(image, where)


def _convert_rgb(image: Image.Image, where: str) -> Image.Image:
    return image.convert("RGB")


def _grey_to_rgb(grey: np.ndarray, scale: float, top: float, where: str, mode: str) -> Image.Image:
    """Scale a grey array to 8 bits; refuse values that would saturate."""
    values = grey.astype(np.float64)
    low, high = (float(np.min(values)), float(np.max(values))) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > top:
        raise ImageDecodeError(f"image {where} (mode {mode}) holds values in [{low:g}, {high:g}], outside "
                               f"[0, {top:g}] that this mode is read as; convert it to 8-bit or 16-bit first")
    eight = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _integer_grey(image: Image.Image, where: str) -> Image.Image:
    return _grey_to_rgb(np.asarray(image), 257.0, 65535.0, where, image.mode)


def _float_grey(image: Image.Image, where: str) -> Image.Image:
    return _grey_to_rgb(np.asarray(image), 1.0 / 255.0, 1.0, where, image.mode)


# Pillow mode -> conversion to 8-bit RGB; modes not listed use convert("RGB") (L, 1, P, CMYK, RGBA, LA, ...).
_TO_RGB = {
    "I;16": _integer_grey, "I;16L": _integer_grey, "I;16B": _integer_grey, "I;16N": _integer_grey,
    "I": _integer_grey,  # 32-bit integers, read as 16-bit values (what Pillow gives for 16-bit greys)
    "F": _float_grey,
}


def _from_array(array: np.ndarray, where: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageDecodeError(f"image array {where} has dtype {array.dtype}; pass uint8 pixels (HxW or HxWxC)")
    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[2]]
        return Image.fromarray(array.squeeze(2) if mode == "L" else array, mode=mode)
    raise ImageDecodeError(f"image array {where} has shape {array.shape}; pass HxW, HxWx1, HxWx3 or HxWx4")


def resize_for_encoder(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize (and crop) an RGB image by the encoder's rule; returns (S, S, 3) uint8."""
    size = spec.input_size
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "squash":
        out = image.resize((size, size), resample)
    else:
        w, h = image.size
        short = spec.short_side
        # Resize(int) as torchvision and transformers do it: the short side becomes `short`, the long
        # side int(short * long / short_before).
        if w <= h:
            new_w, new_h = short, int(short * h / w)
        else:
            new_w, new_h = int(short * w / h), short
        resized = image.resize((new_w, new_h), resample)
        left, top = _CROP_OFFSET[spec.crop_offset](new_w - size), _CROP_OFFSET[spec.crop_offset](new_h - size)
        out = resized.crop((left, top, left + size, top + size))
    return np.array(out, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only buffers


def prepare_batch(sources: Sequence[ImageSource], spec: PreprocessSpec,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and resize many crops into one (N, S, S, 3) uint8 batch for the encoder graph."""
    if len(sources) == 0:
        raise ImageDecodeError("no images given; pass at least one crop")
    return np.stack([resize_for_encoder(load_image(s, max_pixels=max_pixels), spec) for s in sources])


def crop_box(image: Image.Image, box_xyxy: Sequence[float], origin: str = "box") -> Image.Image:
    """Crop a pixel box (x1, y1, x2, y2), clipped to the image; refuses boxes with no overlap."""
    w, h = image.size
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    cx1, cy1 = max(0.0, min(x1, x2)), max(0.0, min(y1, y2))
    cx2, cy2 = min(float(w), max(x1, x2)), min(float(h), max(y1, y2))
    if cx2 - cx1 < 1 or cy2 - cy1 < 1:
        raise ImageDecodeError(
            f"{origin} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {w}x{h} image; "
            "check that the box is in pixels of this image"
        )
    return image.crop((int(round(cx1)), int(round(cy1)), int(round(cx2)), int(round(cy2))))
