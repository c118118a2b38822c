"""Pieces both clients share: preparing crops, splitting batches, building requests."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from headserve.client.discovery import EMBEDDING, INPUT, OOD_SCORE, PROBS, HeadInfo
from headserve.client.errors import BadInputError
from headserve.errors import ImageDecodeError
from headserve.preprocess import DEFAULT_MAX_PIXELS, ImageSource, prepare_batch

log = logging.getLogger("headserve.client")
DINOV3_PREFILTER_MESSAGE = "prompt prefilter disabled for DINOv3"


def prepare(images: Sequence[ImageSource], info: HeadInfo, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and resize crops exactly as training did; a bad or too large crop is a ``BadInputError``."""
    try:
        return prepare_batch(list(images), info.preprocess, max_pixels)
    except ImageDecodeError as exc:
        raise BadInputError(str(exc)) from exc


def changed_message(head: str, url: str, info: HeadInfo, cause: Exception) -> str:
    """Why a call gave up after re-reading a head once: its version kept changing under the call."""
    return (f"head {head!r} on {url} changed while answering, again after it was re-read as version "
            f"{info.version or '?'} ({cause}); no answer was labelled. Retry once the new version is loaded")


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


def batches(n: int, size: int) -> list[slice]:
    """Slices of at most ``size`` rows covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]


def head_outputs(info: HeadInfo, embedding: bool) -> list[str]:
    """Outputs to request from the ensemble: probabilities, plus what the call needs and the head has."""
    names = [PROBS]
    if info.has_ood_score:
        names.append(OOD_SCORE)
    if embedding:
        names.append(EMBEDDING)
    return names


def infer_input(module, name: str, array: np.ndarray, dtype: str):
    """An InferInput of tritonclient.grpc (the aio client uses the same class)."""
    inp = module.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return inp


def pixels_input(module, pixels: np.ndarray):
    return infer_input(module, INPUT, pixels, "UINT8")


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class PrefilterPolicy:
    """Decides per head whether the prompt prefilter runs, logging the DINOv3 notice once per client."""

    def __init__(self) -> None:
        self._told: set[str] = set()

    def active(self, info: HeadInfo, wanted: bool) -> bool:
        if not wanted:
            return False
        if not info.prefilter_supported:
            self._once(info.encoder_type, DINOV3_PREFILTER_MESSAGE if info.encoder_type == "dinov3"
                       else f"prompt prefilter disabled for {info.encoder_type}")
            return False
        if info.prompt_model is None:
            self._once(info.name, f"prompt prefilter unavailable for head {info.name!r}: it publishes no "
                                  "prompt_model; gating on the head only")
            return False
        return True

    def _once(self, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            log.info(message)
