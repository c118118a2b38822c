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
from PIL import Image, UnidentifiedImageError

from headserve.encoders import PreprocessSpec
from headserve.errors import ImageDecodeError

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


def load_image(source: ImageSource, origin: str | None = None) -> Image.Image:
    """Decode a path, encoded bytes, PIL image or HxWxC uint8 array into an RGB PIL image.

    Grayscale and palette images are expanded and RGBA is composited on black (alpha dropped), the
    same conversion training used. ``origin`` names the source in error messages.
    """
    where = origin or (str(source) if isinstance(source, (str, PathLike)) else type(source).__name__)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, where)
    else:
        try:
            if isinstance(source, bytes):
                image = Image.open(io.BytesIO(source))
            else:
                path = Path(source)
                if not path.is_file():
                    raise ImageDecodeError(f"image {where} does not exist or is not a file; check the path")
                image = Image.open(path)
            image.load()
        except ImageDecodeError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ImageDecodeError(
                f"image {where} does not decode ({exc.__class__.__name__}: {exc}); "
                "pass a JPEG, PNG or other format Pillow reads"
            ) from exc
    if image.mode != "RGB":
        image = image.convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"image {where} is {image.size[0]}x{image.size[1]} pixels; crops need at least "
            f"{MIN_SIDE}x{MIN_SIDE}. Check the box coordinates that produced it"
        )
    return image


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


def prepare_batch(sources: Sequence[ImageSource], spec: PreprocessSpec) -> np.ndarray:
    """Decode and resize many crops into one (N, S, S, 3) uint8 batch for the encoder graph."""
    if len(sources) == 0:
        raise ImageDecodeError("no images given; pass at least one crop")
    return np.stack([resize_for_encoder(load_image(s), spec) for s in sources])


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
