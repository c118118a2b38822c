"""The asyncio client: the same calls as ``HeadClient``, awaited, over ``tritonclient.grpc.aio``.

``async with AsyncHeadClient(url) as c: preds = await c.classify("my_head", crops)``. Batches of
one call run concurrently, bounded by ``ConnectionOptions.max_in_flight``.

What each call decides lives in ``headserve.client.core``, shared with ``HeadClient``; this module is its
asyncio transport: the aio gRPC client, retries with ``asyncio.sleep``, a semaphore for the requests in
flight, and cancellation, which ends the call's plan and cancels its requests still in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, Sequence, cast

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
)
from headserve.client.options import ConnectionOptions
from headserve.contract import PROBS
from headserve.preprocess import ImageSource


class AsyncHeadClient:
    """Asyncio twin of ``HeadClient``; create it inside the running event loop."""

    def __init__(self, url: str, options: ConnectionOptions | None = None, timeout_s: float | None = None,
                 observer: Observer | None = None) -> None:
        import tritonclient.grpc.aio as aioclient

        options = options or ConnectionOptions()
        if timeout_s is not None:
            options = replace(options, timeout_s=timeout_s)
        self.url = url
        self.options = options
        self._client = aioclient.InferenceServerClient(url, **options.client_kwargs())
        self._core = ClientCore(url, options, observer)
        self._slots = asyncio.Semaphore(options.max_in_flight)
        # operation type -> how this transport performs it
        self._operations: dict[type, Callable[[Any], Awaitable[Any]]] = {
            ReadReady: self._read_ready, ReadVersions: self._read_versions, ReadConfig: self._read_config,
            Send: self._send,
        }

    async def __aenter__(self) -> "AsyncHeadClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    @property
    def _info(self) -> dict[str, HeadInfo]:
        """The heads this client has read, by name (the core's cache)."""
        return self._core.heads

    # -- driving the core's plans -----------------------------------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        """As ``HeadClient._drive``, awaiting each operation; a cancelled call ends its plan and stays cancelled."""
        answer: Any = None
        failure: Exception | None = None
        while True:
            try:
                op = plan.throw(failure) if failure is not None else plan.send(answer)
            except StopIteration as done:
                return cast(T, done.value)  # what the plan returned
            answer, failure = None, None
            try:
                answer = await self._operations[type(op)](op)
            except Exception as exc:  # a ClientError (or an answer's StaleAnswer): the plan decides what it means
                failure = exc
            except BaseException:  # CancelledError, KeyboardInterrupt: nothing to decide, end the plan
                plan.close()
                raise

    async def _call(self, what: str, fn: Callable[[float], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Await ``fn(deadline_s)``, retrying with backoff while the server is UNAVAILABLE."""
        from tritonclient.utils import InferenceServerException

        timeout = timeout_s or self.options.timeout_s
        attempt = 0
        while True:
            try:
                return await fn(timeout)
            except InferenceServerException as exc:
                err = from_triton(exc, f"{what} at {self.url}")
                delay = self.options.retry_delay(err, attempt)
                if delay is None:
                    raise err from exc
                await asyncio.sleep(delay)
                attempt += 1

    async def _read_ready(self, op: ReadReady) -> bool:
        return bool(await self._call(op.what, lambda t: self._client.is_model_ready(op.model, client_timeout=t)))

    async def _read_versions(self, op: ReadVersions) -> list[str]:
        meta = await self._call(op.what, lambda t: self._client.get_model_metadata(op.model, client_timeout=t))
        return list(meta.versions)

    async def _read_config(self, op: ReadConfig) -> Any:
        response = await self._call(op.what, lambda t: self._client.get_model_config(
            op.model, op.version or "", client_timeout=t))
        return response.config

    async def _send(self, op: Send) -> list[Answer]:
        """Requests concurrently, at most ``max_in_flight`` of this client's at once; when one fails (or the call
        is cancelled) the others are cancelled, as their answers could no longer be used."""
        tasks = [asyncio.ensure_future(self._request(r)) for r in op.requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _request(self, request: Request) -> Answer:
        async with self._slots:
            started = time.perf_counter()
            result = await self._call(request.what, lambda t: self._client.infer(
                request.model, request.triton_inputs(), model_version=request.version,
                outputs=request.triton_outputs(), client_timeout=t, compression_algorithm=self.options.compression),
                request.timeout_s)
            seconds = time.perf_counter() - started
        outputs = {name: result.as_numpy(name) for name in request.outputs}
        return Answer(result.get_response().model_version, outputs, seconds)

    # -- the API ----------------------------------------------------------------------------------

    async def info(self, head: str, refresh: bool = False) -> HeadInfo:
        """As ``HeadClient.info``: read from the newest ready version, which requests are then pinned to."""
        return await self._drive(self._core.read_head(head, refresh))

    async def outputs(self, head: str, images: Sequence[ImageSource], embedding: bool = False,
                      timeout_s: float | None = None) -> dict[str, np.ndarray]:
        return await self._drive(self._core.outputs(head, images, embedding, timeout_s))

    async def probabilities(self, head: str, images: Sequence[ImageSource],
                            timeout_s: float | None = None) -> np.ndarray:
        return (await self.outputs(head, images, timeout_s=timeout_s))[PROBS]

    async def classify(self, head: str, images: Sequence[ImageSource], top_k: int = 3,
                       thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        return await self._drive(self._core.classify(head, images, top_k, thresholds, timeout_s))

    async def classify_regions(self, head: str, image: ImageSource, boxes: Any, top_k: int = 3,
                         thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        """One decision per box of ``image`` from a region head, in the boxes' order, with one request.

        ``boxes``: (K, 4) x1, y1, x2, y2 in pixels of the image as displayed (EXIF-rotated). Boxes reaching past
        an edge are clipped (and logged); a box with no area, outside the image or not finite, and more boxes
        than the head's cap, are a ``BadInputError`` naming them. No boxes: an empty list, no request.
        """
        return await self._drive(self._core.classify_regions(head, image, boxes, top_k, thresholds, timeout_s))

    async def region_outputs(self, head: str, image: ImageSource, boxes: Any, embedding: bool = False,
                       timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Raw outputs of a region head for ``image``'s boxes: ``probs`` (K, C), plus ``ood_score`` and
        ``embedding`` when present/asked; K rows in the boxes' order (as ``classify_regions``)."""
        return await self._drive(self._core.region_outputs(head, image, boxes, embedding, timeout_s))

    async def similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        return await self._drive(self._core.similarities(head, embeddings, timeout_s))

    async def gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
                   timeout_s: float | None = None) -> list[GateResult]:
        return await self._drive(self._core.gate(head, images, config, timeout_s))

    async def estimate(self, head: str, candidates: int, batch_size: int = 8, repeats: int = 5) -> ComputeEstimate:
        """Expected cost of gating ``candidates`` crops, from latencies measured now; as ``HeadClient.estimate``."""
        return await self._drive(self._core.estimate(head, candidates, batch_size, repeats))
