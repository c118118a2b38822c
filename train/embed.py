"""Embeddings of crops through a frozen encoder graph, in batches.

The crops go through ``headserve.preprocess`` (the client's own resize) and then through the same
``EncoderGraph`` that export writes to ONNX, so training sees exactly what serving will compute.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from headserve.backbones import EncoderGraph
from headserve.encoders import PreprocessSpec
from headserve.preprocess import resize_for_encoder


@torch.inference_mode()
def embed_pixels(graph: EncoderGraph, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, D) float32 L2-normalised embeddings."""
    out = [graph(torch.from_numpy(pixels[i:i + batch_size])).numpy() for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out).astype(np.float32)


def pixels_of(crops: Iterable[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Resize crops by the encoder's rule into one uint8 batch."""
    return np.stack([resize_for_encoder(c, spec) for c in crops])


def embed_crops(graph: EncoderGraph, crops: Sequence[Image.Image], spec: PreprocessSpec,
                batch_size: int = 64) -> np.ndarray:
    return embed_pixels(graph, pixels_of(crops, spec), batch_size)
