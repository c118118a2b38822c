"""A gRPC client that turns crops into calibrated class probabilities.

The caller names a head; everything else (classes, background classes, encoder family, input size
and resize rule) is read from the served ensemble's config, which export publishes. Crops are resized
here exactly as at training time and sent as uint8, a quarter of the bytes of float input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from headserve.client.errors import HeadNotFoundError, ServerSideError, ServerUnavailableError
from headserve.encoders import PreprocessSpec
from headserve.preprocess import ImageSource, prepare_batch

INPUT = "pixels"
PROBS = "probs"
LOGITS = "logits"


@dataclass(frozen=True)
class HeadInfo:
    """What the server publishes about a head."""

    name: str
    classes: tuple[str, ...]
    background_indices: tuple[int, ...]
    encoder_type: str
    encoder_model: str
    preprocess: PreprocessSpec
    max_batch_size: int


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float  # calibrated probability of ``label``
    probs: np.ndarray  # (C,) calibrated probabilities in class order
    top_k: tuple[tuple[str, float], ...]


class HeadClient:
    """``with HeadClient("127.0.0.1:8001") as c: c.classify("my_head", ["crop.png"])``."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self.timeout_s = timeout_s
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        self._info: dict[str, HeadInfo] = {}

    def __enter__(self) -> "HeadClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def info(self, head: str) -> HeadInfo:
        if head not in self._info:
            from tritonclient.utils import InferenceServerException

            try:
                ready = self._client.is_model_ready(head, client_timeout=self.timeout_s)
                config = self._client.get_model_config(head, client_timeout=self.timeout_s).config if ready else None
            except InferenceServerException as exc:
                raise ServerUnavailableError(f"no Triton server answered at {self.url} ({exc.message()}); "
                                             "start one with `headserve serve REPO`") from exc
            if config is None:
                raise HeadNotFoundError(f"head {head!r} is not ready on {self.url}; `headserve repo list` shows "
                                        "what the repository holds")
            p = {k: v.string_value for k, v in config.parameters.items()}
            self._info[head] = HeadInfo(
                name=head,
                classes=tuple(json.loads(p["classes"])),
                background_indices=tuple(json.loads(p.get("background_indices", "[]"))),
                encoder_type=p.get("encoder_type") or "clip",
                encoder_model=p.get("encoder_model", ""),
                preprocess=PreprocessSpec.from_dict(json.loads(p["preprocess"])),
                max_batch_size=int(config.max_batch_size) or 1,
            )
        return self._info[head]

    def probabilities(self, head: str, images: Sequence[ImageSource]) -> np.ndarray:
        """(N, C) calibrated probabilities for N crops."""
        info = self.info(head)
        pixels = prepare_batch(images, info.preprocess)
        parts = [self._infer(head, pixels[i:i + info.max_batch_size])
                 for i in range(0, len(pixels), info.max_batch_size)]
        return np.concatenate(parts)

    def classify(self, head: str, images: Sequence[ImageSource], top_k: int = 3) -> list[Prediction]:
        info = self.info(head)
        probs = self.probabilities(head, images)
        out = []
        for row in probs:
            order = np.argsort(-row)[:top_k]
            out.append(Prediction(label=info.classes[order[0]], confidence=float(row[order[0]]), probs=row,
                                  top_k=tuple((info.classes[i], float(row[i])) for i in order)))
        return out

    def _infer(self, head: str, pixels: np.ndarray) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        inp = self._grpc.InferInput(INPUT, list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        try:
            result = self._client.infer(head, [inp], outputs=[self._grpc.InferRequestedOutput(PROBS)],
                                        client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise ServerSideError(f"inference on head {head!r} at {self.url} failed: {exc.message()}") from exc
        return result.as_numpy(PROBS)
