"""The synchronous gRPC client: crops in, decisions out.

The caller names a head; everything else (classes, background classes, encoder family, input size
and resize rule, OOD threshold, prompt model) is read from the served ensemble's config, which export
publishes. Crops are resized here exactly as at training time and sent as uint8, a quarter of the
bytes of float input, in batches no larger than the model's max batch size, several in flight.

What each call decides lives in ``headserve.client.core``; this module is its blocking transport:
tritonclient's gRPC client, deadlines and retries with ``time.sleep``, and a thread pool that bounds the
requests in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from headserve.client.core import ClientCore
from headserve.client.decision import Prediction, Thresholds
from headserve.client.discovery import HeadInfo
from headserve.client.errors import from_triton
from headserve.client.estimate import ComputeEstimate
from headserve.client.gating import GateConfig, GateResult
from headserve.client.observer import Observer
from headserve.client.operations import (
    Answer,
    Plan,
    ReadConfig,
    ReadReady,
    ReadVersions,
    Request,
    Send,
    T,
    drive,
)
from headserve.client.options import ConnectionOptions
from headserve.contract import PROBS
from headserve.preprocess import ImageSource


class HeadClient:
    """``with HeadClient("127.0.0.1:8001") as c: c.classify("my_head", ["crop.png"])``."""

    def __init__(self, url: str, options: ConnectionOptions | None = None, timeout_s: float | None = None,
                 observer: Observer | None = None) -> None:
        import tritonclient.grpc as grpcclient

        options = options or ConnectionOptions()
        if timeout_s is not None:
            options = replace(options, timeout_s=timeout_s)
        self.url = url
        self.options = options
        self._client = grpcclient.InferenceServerClient(url, **options.client_kwargs())
        self._core = ClientCore(url, options, observer)
        self._pool = ThreadPoolExecutor(max_workers=options.max_in_flight, thread_name_prefix="headserve-client")
        # operation type -> how this transport performs it
        self._operations: dict[type, Callable[[Any], Any]] = {
            ReadReady: self._read_ready, ReadVersions: self._read_versions, ReadConfig: self._read_config,
            Send: self._send,
        }

    def __enter__(self) -> "HeadClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    @property
    def _info(self) -> dict[str, HeadInfo]:
        """The heads this client has read, by name (the core's cache)."""
        return self._core.heads

    # -- driving the core's plans -----------------------------------------------------------------

    def _drive(self, plan: Plan[T]) -> T:
        """Perform each operation ``plan`` yields (``drive``), blocking, until it returns."""
        return drive(plan, lambda op: self._operations[type(op)](op))

    def _call(self, what: str, fn: Callable[[float], T], timeout_s: float | None = None) -> T:
        """Run ``fn(deadline_s)``, retrying with backoff while the server is UNAVAILABLE."""
        from tritonclient.utils import InferenceServerException

        timeout = timeout_s or self.options.timeout_s
        attempt = 0
        while True:
            try:
                return fn(timeout)
            except InferenceServerException as exc:
                err = from_triton(exc, f"{what} at {self.url}")
                delay = self.options.retry_delay(err, attempt)
                if delay is None:
                    raise err from exc
                time.sleep(delay)
                attempt += 1

    def _read_ready(self, op: ReadReady) -> bool:
        return bool(self._call(op.what, lambda t: self._client.is_model_ready(op.model, client_timeout=t)))

    def _read_versions(self, op: ReadVersions) -> list[str]:
        meta = self._call(op.what, lambda t: self._client.get_model_metadata(op.model, client_timeout=t))
        return list(meta.versions)

    def _read_config(self, op: ReadConfig) -> Any:
        return self._call(op.what, lambda t: self._client.get_model_config(
            op.model, op.version or "", client_timeout=t).config)

    def _send(self, op: Send) -> list[Answer]:
        """Requests in flight together on the client's pool; one alone is sent from the calling thread."""
        if len(op.requests) == 1:
            return [self._request(op.requests[0])]
        return list(self._pool.map(self._request, op.requests))

    def _request(self, request: Request) -> Answer:
        started = time.perf_counter()
        result = self._call(request.what, lambda t: self._client.infer(
            request.model, request.triton_inputs(), model_version=request.version,
            outputs=request.triton_outputs(), client_timeout=t, compression_algorithm=self.options.compression),
            request.timeout_s)
        outputs = {name: result.as_numpy(name) for name in request.outputs}
        return Answer(result.get_response().model_version, outputs, time.perf_counter() - started)

    # -- the API ----------------------------------------------------------------------------------

    def info(self, head: str, refresh: bool = False) -> HeadInfo:
        """What the server publishes about ``head``, read from its newest ready version (cached per client).

        Requests are pinned to that version, and every answer is checked against it (``check_answer``);
        an answer from another version makes the client re-read the head once and resend (``refresh``).
        """
        return self._drive(self._core.read_head(head, refresh))

    def outputs(self, head: str, images: Sequence[ImageSource], embedding: bool = False,
                timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Raw ensemble outputs for N crops: ``probs`` (N, C), plus ``ood_score`` and ``embedding`` when asked/present.

        ``probs`` is in the class order of ``self.info(head)`` as it stands after the call.
        """
        return self._drive(self._core.outputs(head, images, embedding, timeout_s))

    def probabilities(self, head: str, images: Sequence[ImageSource], timeout_s: float | None = None) -> np.ndarray:
        """(N, C) calibrated probabilities for N crops."""
        return self.outputs(head, images, timeout_s=timeout_s)[PROBS]

    def classify(self, head: str, images: Sequence[ImageSource], top_k: int = 3,
                 thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        """Label, calibrated confidence, top-k and a decision with its reason, per crop."""
        return self._drive(self._core.classify(head, images, top_k, thresholds, timeout_s))

    def classify_regions(self, head: str, image: ImageSource, boxes: Any, top_k: int = 3,
                         thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        """One decision per box of ``image`` from a region head, in the boxes' order, with one request.

        ``boxes``: (K, 4) x1, y1, x2, y2 in pixels of the image as displayed (EXIF-rotated). Boxes reaching past
        an edge are clipped (and logged); a box with no area, outside the image or not finite, and more boxes
        than the head's cap, are a ``BadInputError`` naming them. No boxes: an empty list, no request.
        """
        return self._drive(self._core.classify_regions(head, image, boxes, top_k, thresholds, timeout_s))

    def region_outputs(self, head: str, image: ImageSource, boxes: Any, embedding: bool = False,
                       timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Raw outputs of a region head for ``image``'s boxes: ``probs`` (K, C), plus ``ood_score`` and
        ``embedding`` when present/asked; K rows in the boxes' order (as ``classify_regions``)."""
        return self._drive(self._core.region_outputs(head, image, boxes, embedding, timeout_s))

    def similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """(N, P) similarity of each embedding to each prompt, from the head's prompt model (CLIP heads)."""
        return self._drive(self._core.similarities(head, embeddings, timeout_s))

    def gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
             timeout_s: float | None = None) -> list[GateResult]:
        """Kept and dropped candidates for ``config.target``, each with its reason."""
        return self._drive(self._core.gate(head, images, config, timeout_s))

    def estimate(self, head: str, candidates: int, batch_size: int = 8, repeats: int = 5) -> ComputeEstimate:
        """Expected cost of gating ``candidates`` crops, from latencies measured now on this server."""
        return self._drive(self._core.estimate(head, candidates, batch_size, repeats))
