"""Decoding a dataset's crops, torch-free: each image decoded once for all of its boxes, cropped and resized by
the encoder's rule (``headserve.preprocess``). The built-in extraction (``train.embed``) runs it on threads and
Ray's decode tasks (``train.ray_embed``) in worker processes that never import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from headserve.encoders import PreprocessSpec
from headserve.errors import HeadserveError
from headserve.preprocess import crop_box, load_image, resize_for_encoder


class ImageFailed(HeadserveError):
    """An image that does not decode; its objects are skipped and reported."""


def decode_crops(path: Path, boxes: Sequence[tuple[float, float, float, float]], spec: PreprocessSpec,
            ) -> list[np.ndarray | ImageFailed] | ImageFailed:
    """One image, decoded once: the encoder-sized uint8 crop of each box, or why that box (or the whole
    image) failed; a box too small to crop costs only its own object."""
    try:
        image = load_image(path)
    except HeadserveError as exc:  # ImageDecodeError: truncated or unreadable, too many pixels
        return ImageFailed(str(exc))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL errors past the header
        return ImageFailed(f"{path}: {exc.__class__.__name__}: {exc}")
    crops: list[np.ndarray | ImageFailed] = []
    for box in boxes:
        try:
            crops.append(resize_for_encoder(crop_box(image, box, origin=str(path)), spec))
        except HeadserveError as exc:
            crops.append(ImageFailed(str(exc)))
    return crops


def grouped_by_image(images: Sequence[Path]) -> list[tuple[Path, list[int]]]:
    """Object indices grouped by image, images in order of first appearance."""
    groups: dict[Path, list[int]] = {}
    for i, path in enumerate(images):
        groups.setdefault(path, []).append(i)
    return list(groups.items())
