"""Turning what a caller passes into what a request carries: crops into uint8 pixels, embeddings into FP32.

Both refuse bad input here, before anything is sent, with a ``BadInputError`` that names it; a NaN sent
on would come back as a silent NaN answer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from headserve.client.discovery import HeadInfo
from headserve.client.errors import BadInputError
from headserve.errors import ImageDecodeError
from headserve.preprocess import DEFAULT_MAX_PIXELS, ImageSource, prepare_batch


def prepare(images: Sequence[ImageSource], info: HeadInfo, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and resize crops exactly as training did; a bad or too large crop is a ``BadInputError``."""
    try:
        return prepare_batch(list(images), info.preprocess, max_pixels)
    except ImageDecodeError as exc:
        raise BadInputError(str(exc)) from exc


def finite_embeddings(embeddings: np.ndarray, origin: str) -> np.ndarray:
    """FP32 embeddings, refused with the first bad row when any value is NaN or infinite.

    A non-finite value would come back as NaN similarities with no error; the server refuses it too.
    """
    array = np.ascontiguousarray(embeddings, np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise BadInputError(f"{origin} hold {int(bad.sum())} NaN or infinite value(s) (first in row {row}); "
                            "pass the encoder's embeddings, which are finite and L2-normalised")
    return array
