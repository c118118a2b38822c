"""One image and its boxes in, one decision per box out: the client side of region heads.

A region head (``EncoderIdentity.region``) is served by an ensemble that takes one letterboxed image,
uint8 (1, R, R, 3), and its boxes, FP32 (K, 4) in pixels of that frame (``export.region_ensemble``). The
client letterboxes the image with the geometry training used (``headserve.regions``), checks the boxes
(edges clipped and reported; a box with no area, outside the image or not finite refused by index),
sends one request, and decides each box with ``decide``, the function the crop call uses: the same
decisions and reasons. An image without boxes is answered here, with no request.

Torch-free, like the rest of the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from headserve.client.batching import BatchPlan
from headserve.client.discovery import HeadInfo
from headserve.client.errors import BadInputError, ServerSideError
from headserve.client.operations import Request, Tensor
from headserve.contract import (
    BOXES,
    EMBEDDING,
    HEAD_ID,
    LOGITS,
    MAX_BOXES_KEY,
    OOD_SCORE,
    PROBS,
    REGION_PIXELS,
    MalformedParameterError,
    max_boxes_of,
)
from headserve.errors import ImageDecodeError, RegionBoxError
from headserve.preprocess import DEFAULT_MAX_PIXELS, ImageSource, load_image
from headserve.regions import ClippedBox, Letterbox, RegionSpec, check_boxes, letterbox_pixels

log = logging.getLogger("headserve.client.regions")

__all__ = ["MAX_BOXES_KEY", "RegionInputs", "max_boxes", "region_inputs", "region_of", "region_requests",
           "require_crop_head"]


def region_of(info: HeadInfo) -> RegionSpec:
    """The head's region spec; a crop head is a ``BadInputError`` pointing at the crop call."""
    region = info.served.encoder.region
    if region is None:
        raise BadInputError(f"head {info.name!r} was trained on crop embeddings ({info.served.encoder.label}); "
                            "classify its crops with `classify`, or call a head trained with `pooling` region")
    return region


def require_crop_head(info: HeadInfo) -> None:
    """Refuse crops for a region head, whose ensemble takes an image and its boxes, pointing at that call."""
    if info.served.encoder.region is not None:
        raise BadInputError(f"head {info.name!r} was trained on region embeddings ({info.served.encoder.mode}); "
                            "its ensemble takes a whole image and its boxes: call classify_regions(head, image, "
                            "boxes)")


def max_boxes(info: HeadInfo) -> int:
    """The cap on boxes per image the head's ensemble publishes; a missing or bad one is the server's fault."""
    try:
        return max_boxes_of(info.served.extra, f"region head {info.name!r}")
    except MalformedParameterError as exc:
        raise ServerSideError(str(exc)) from None


@dataclass(frozen=True)
class RegionInputs:
    """What one region request carries, and how the caller's boxes became its rows."""

    frame: np.ndarray  # uint8 (1, R, R, 3): the image letterboxed
    boxes: np.ndarray  # float32 (K, 4): the checked boxes in pixels of the frame, in the caller's order
    letterbox: Letterbox  # where the image lies in the frame
    clipped: tuple[ClippedBox, ...] = ()  # boxes that reached past the image's edge, clipped as pooled

    def __len__(self) -> int:
        return len(self.boxes)


def region_inputs(info: HeadInfo, image: ImageSource, boxes: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
                  origin: str = "boxes") -> RegionInputs:
    """The request tensors for ``image`` and its ``boxes`` (x1, y1, x2, y2 in pixels of the image as displayed).

    A bad image or box, or more boxes than the head's cap, is a ``BadInputError`` naming it; clipped
    boxes are logged and listed in ``clipped``.
    """
    region = region_of(info)
    try:
        picture = load_image(image, max_pixels=max_pixels)
        checked = check_boxes(boxes, picture.width, picture.height, origin)
    except (ImageDecodeError, RegionBoxError) as exc:
        raise BadInputError(str(exc)) from exc
    cap = max_boxes(info)
    if len(checked) > cap:
        raise BadInputError(f"{origin}: {len(checked)} boxes for one image, more than the {cap} boxes per image head "
                            f"{info.name!r} accepts (its {MAX_BOXES_KEY} parameter); send at most {cap} per call, "
                            "e.g. split the boxes into several calls on the same image")
    for box in checked.clipped:
        log.info("%s: %s", info.name, box.describe())
    frame, letterbox = letterbox_pixels(picture, region)
    return RegionInputs(frame[None], letterbox.to_frame(checked.boxes), letterbox, checked.clipped)


def region_requests(head: str, info: HeadInfo, inputs: RegionInputs, outputs: tuple[str, ...],
                    timeout_s: float | None) -> tuple[BatchPlan, tuple[Request, ...]]:
    """One request for the image and all its boxes, boxes first so its rows are the boxes; none without boxes."""
    batches = BatchPlan(len(inputs), max(1, len(inputs)))
    if not len(inputs):
        return batches, ()
    return batches, (Request(head, (Tensor(BOXES, inputs.boxes, "FP32"), Tensor(REGION_PIXELS, inputs.frame, "UINT8")),
                             outputs, info.version, timeout_s),)


def empty_outputs(info: HeadInfo, outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of an image without boxes: each with no rows, at its width and type."""
    widths = {PROBS: len(info.classes), LOGITS: len(info.classes), OOD_SCORE: 1, HEAD_ID: 1,
              EMBEDDING: info.embedding_dim}
    return {name: np.zeros((0, widths.get(name, 0)), dtype=np.int64 if name == HEAD_ID else np.float32)
            for name in outputs}
