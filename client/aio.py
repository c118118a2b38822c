"""The asyncio client: the same calls as ``HeadClient``, awaited, over ``tritonclient.grpc.aio``.

``async with AsyncHeadClient(url) as c: preds = await c.classify("my_head", crops)``. Batches of
one call run concurrently, bounded by ``ConnectionOptions.max_in_flight``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from typing import Awaitable, Callable, Sequence, TypeVar

import numpy as np

from headserve.client import batching
from headserve.client.decision import Prediction, Thresholds, decide
from headserve.client.discovery import (
    EMBEDDING,
    OOD_SCORE,
    PROBS,
    PROMPT_INPUT,
    PROMPT_OUTPUT,
    HeadInfo,
    StaleAnswer,
    check_answer,
    head_info_from_config,
    latest_version,
)
from headserve.client.errors import HeadChangedError, ModelNotReadyError, ServerUnavailableError, from_triton
from headserve.client.gating import ComputeEstimate, EstimateProbe, GateConfig, GateResult, gate, median_seconds
from headserve.client.options import ConnectionOptions
from headserve.preprocess import ImageSource

T = TypeVar("T")


class AsyncHeadClient:
    """Asyncio twin of ``HeadClient``; create it inside the running event loop."""

    def __init__(self, url: str, options: ConnectionOptions | None = None, timeout_s: float | None = None) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        options = options or ConnectionOptions()
        if timeout_s is not None:
            options = replace(options, timeout_s=timeout_s)
        self.url = url
        self.options = options
        self._grpc = grpcclient
        self._client = aioclient.InferenceServerClient(url, **options.client_kwargs())
        self._info: dict[str, HeadInfo] = {}
        self._prompt_batch: dict[str, int] = {}
        self._prefilter = batching.PrefilterPolicy()
        self._slots = asyncio.Semaphore(options.max_in_flight)

    async def __aenter__(self) -> "AsyncHeadClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, what: str, fn: Callable[[float], Awaitable[T]], timeout_s: float | None = None) -> T:
        from tritonclient.utils import InferenceServerException

        timeout = timeout_s or self.options.timeout_s
        for attempt in range(self.options.retries + 1):
            try:
                return await fn(timeout)
            except InferenceServerException as exc:
                err = from_triton(exc, f"{what} at {self.url}")
                if isinstance(err, ServerUnavailableError) and attempt < self.options.retries:
                    await asyncio.sleep(self.options.backoff(attempt))
                    continue
                raise err from exc
        raise AssertionError("unreachable")

    async def info(self, head: str, refresh: bool = False) -> HeadInfo:
        """As ``HeadClient.info``: read from the newest ready version, which requests are then pinned to."""
        if refresh or head not in self._info:
            ready = await self._call(f"readiness of {head!r}",
                                     lambda t: self._client.is_model_ready(head, client_timeout=t))
            if not ready:
                raise ModelNotReadyError(f"head {head!r} is not ready on {self.url}; check the name, or wait for the "
                                         "server to finish loading it (its repository index lists what it serves)")
            meta = await self._call(f"metadata of {head!r}",
                                    lambda t: self._client.get_model_metadata(head, client_timeout=t))
            version = latest_version(meta.versions)
            response = await self._call(f"config of {head!r} version {version or 'latest'}",
                                        lambda t: self._client.get_model_config(head, version, client_timeout=t))
            self._info[head] = head_info_from_config(head, response.config, version)
        return self._info[head]

    async def _infer(self, model: str, inputs: list, outputs: list[str], timeout_s: float | None,
                     version: str = "") -> tuple[str, dict[str, np.ndarray]]:
        requested = [self._grpc.InferRequestedOutput(o) for o in outputs]
        async with self._slots:
            result = await self._call(f"inference on {model!r}", lambda t: self._client.infer(
                model, inputs, model_version=version, outputs=requested, client_timeout=t,
                compression_algorithm=self.options.compression), timeout_s)
        return result.get_response().model_version, {o: result.as_numpy(o) for o in outputs}

    async def _infer_batched(self, model: str, array: np.ndarray, max_batch: int, make_input: Callable,
                             outputs: list[str], timeout_s: float | None,
                             info: HeadInfo | None = None) -> dict[str, np.ndarray]:
        version = info.version if info is not None else ""

        async def one(s: slice) -> dict[str, np.ndarray]:
            answered, out = await self._infer(model, [make_input(array[s])], outputs, timeout_s, version)
            if info is not None:
                check_answer(info, answered, out)
            return out

        parts = await asyncio.gather(*(one(s) for s in batching.batches(len(array), max_batch)))
        return batching.concat(list(parts))

    async def _head_outputs(self, head: str, images: Sequence[ImageSource], embedding: bool,
                            timeout_s: float | None) -> tuple[HeadInfo, dict[str, np.ndarray]]:
        """As ``HeadClient._head_outputs``: a version swap mid-call is re-read once, then refused."""
        info = await self.info(head)
        for attempt in range(2):
            pixels = batching.prepare(images, info, self.options.max_pixels)
            try:
                return info, await self._infer_batched(head, pixels, info.max_batch_size,
                                                        lambda a: batching.pixels_input(self._grpc, a),
                                                        batching.head_outputs(info, embedding), timeout_s, info)
            except (StaleAnswer, ModelNotReadyError) as exc:
                if attempt == 1:
                    raise HeadChangedError(batching.changed_message(head, self.url, info, exc)) from exc
                info = await self.info(head, refresh=True)
        raise AssertionError("unreachable")

    async def outputs(self, head: str, images: Sequence[ImageSource], embedding: bool = False,
                      timeout_s: float | None = None) -> dict[str, np.ndarray]:
        return (await self._head_outputs(head, images, embedding, timeout_s))[1]

    async def probabilities(self, head: str, images: Sequence[ImageSource],
                            timeout_s: float | None = None) -> np.ndarray:
        return (await self.outputs(head, images, timeout_s=timeout_s))[PROBS]

    async def classify(self, head: str, images: Sequence[ImageSource], top_k: int = 3,
                       thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        info, out = await self._head_outputs(head, images, False, timeout_s)
        return decide(info, out[PROBS], thresholds or Thresholds(), top_k, out.get(OOD_SCORE))

    async def similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        info = await self.info(head)
        model = info.prompt_model
        if model is None:
            raise ModelNotReadyError(f"head {head!r} ({info.encoder_type}) publishes no prompt_model; "
                                     "only CLIP heads exported with prompts have one")
        if model not in self._prompt_batch:
            response = await self._call(f"config of {model!r}",
                                        lambda t: self._client.get_model_config(model, client_timeout=t))
            self._prompt_batch[model] = int(response.config.max_batch_size) or 1
        embeddings = batching.finite_embeddings(embeddings, f"embeddings for {model!r}")
        make = lambda a: batching.infer_input(self._grpc, PROMPT_INPUT, np.ascontiguousarray(a, np.float32), "FP32")
        out = await self._infer_batched(model, embeddings, self._prompt_batch[model], make, [PROMPT_OUTPUT], timeout_s)
        return out[PROMPT_OUTPUT]

    async def gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
                   timeout_s: float | None = None) -> list[GateResult]:
        prefilter = self._prefilter.active(await self.info(head), config.use_prefilter)
        info, out = await self._head_outputs(head, images, prefilter, timeout_s)
        sims = await self.similarities(head, out[EMBEDDING], timeout_s) if prefilter else None
        preds = decide(info, out[PROBS], config.thresholds, ood_scores=out.get(OOD_SCORE))
        return gate(info, preds, config, sims)

    async def estimate(self, head: str, candidates: int, batch_size: int = 8, repeats: int = 5) -> ComputeEstimate:
        """Expected cost of gating ``candidates`` crops, from latencies measured now; as ``HeadClient.estimate``."""
        info = await self.info(head)
        probe = EstimateProbe.for_head(info, batch_size)
        b = probe.batch_size
        preprocess_s = median_seconds(lambda: batching.prepare([probe.image] * b, info), repeats) / b
        run_head = lambda: self._infer(head, [batching.pixels_input(self._grpc, probe.pixels)], [PROBS], None,
                                       info.version)
        await run_head()  # warm-up: the first request sizes the runtime's buffers
        head_s = await _median_time(run_head, repeats) / b
        prefilter_s = None
        if self._prefilter.active(info, True):
            await self.similarities(head, probe.embeddings)
            prefilter_s = await _median_time(lambda: self.similarities(head, probe.embeddings), repeats) / b
        return ComputeEstimate(head, candidates, preprocess_s, head_s, prefilter_s, b)


async def _median_time(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    """Median wall time of awaiting ``fn()``, run one at a time so requests do not overlap."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
