"""The synchronous gRPC client: crops in, decisions out.

The caller names a head; everything else (classes, background classes, encoder family, input size
and resize rule, OOD threshold, prompt model) is read from the served ensemble's config, which export
publishes. Crops are resized here exactly as at training time and sent as uint8, a quarter of the
bytes of float input, in batches no larger than the model's max batch size, several in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

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


class HeadClient:
    """``with HeadClient("127.0.0.1:8001") as c: c.classify("my_head", ["crop.png"])``."""

    def __init__(self, url: str, options: ConnectionOptions | None = None, timeout_s: float | None = None) -> None:
        import tritonclient.grpc as grpcclient

        options = options or ConnectionOptions()
        if timeout_s is not None:
            from dataclasses import replace

            options = replace(options, timeout_s=timeout_s)
        self.url = url
        self.options = options
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url, **options.client_kwargs())
        self._info: dict[str, HeadInfo] = {}
        self._prompt_batch: dict[str, int] = {}
        self._prefilter = batching.PrefilterPolicy()
        self._pool = ThreadPoolExecutor(max_workers=options.max_in_flight, thread_name_prefix="headserve-client")

    def __enter__(self) -> "HeadClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    # -- calls with deadline, retries and typed errors ------------------------------------------

    def _call(self, what: str, fn: Callable[[float], T], timeout_s: float | None = None) -> T:
        """Run ``fn(deadline_s)``, retrying with backoff while the server is UNAVAILABLE."""
        from tritonclient.utils import InferenceServerException

        timeout = timeout_s or self.options.timeout_s
        for attempt in range(self.options.retries + 1):
            try:
                return fn(timeout)
            except InferenceServerException as exc:
                err = from_triton(exc, f"{what} at {self.url}")
                if isinstance(err, ServerUnavailableError) and attempt < self.options.retries:
                    time.sleep(self.options.backoff(attempt))
                    continue
                raise err from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def info(self, head: str, refresh: bool = False) -> HeadInfo:
        """What the server publishes about ``head``, read from its newest ready version (cached per client).

        Requests are pinned to that version, and every answer is checked against it (``check_answer``);
        an answer from another version makes the client re-read the head once and resend (``refresh``).
        """
        if refresh or head not in self._info:
            ready = self._call(f"readiness of {head!r}", lambda t: self._client.is_model_ready(head, client_timeout=t))
            if not ready:
                raise ModelNotReadyError(f"head {head!r} is not ready on {self.url}; check the name, or wait for the "
                                         "server to finish loading it (its repository index lists what it serves)")
            meta = self._call(f"metadata of {head!r}",
                              lambda t: self._client.get_model_metadata(head, client_timeout=t))
            version = latest_version(meta.versions)
            config = self._call(f"config of {head!r} version {version or 'latest'}",
                                lambda t: self._client.get_model_config(head, version, client_timeout=t).config)
            self._info[head] = head_info_from_config(head, config, version)
        return self._info[head]

    def _infer(self, model: str, inputs: list, outputs: list[str], timeout_s: float | None,
               version: str = "") -> tuple[str, dict[str, np.ndarray]]:
        """One request; returns the version that answered and the outputs."""
        requested = [self._grpc.InferRequestedOutput(o) for o in outputs]
        result = self._call(f"inference on {model!r}", lambda t: self._client.infer(
            model, inputs, model_version=version, outputs=requested, client_timeout=t,
            compression_algorithm=self.options.compression), timeout_s)
        return result.get_response().model_version, {o: result.as_numpy(o) for o in outputs}

    def _infer_batched(self, model: str, array: np.ndarray, max_batch: int, make_input: Callable,
                       outputs: list[str], timeout_s: float | None,
                       info: HeadInfo | None = None) -> dict[str, np.ndarray]:
        """Batches in flight together; with ``info``, each is pinned to its version and checked against it."""
        version = info.version if info is not None else ""

        def one(s: slice) -> dict[str, np.ndarray]:
            answered, out = self._infer(model, [make_input(array[s])], outputs, timeout_s, version)
            if info is not None:
                check_answer(info, answered, out)
            return out

        return batching.concat(list(self._pool.map(one, batching.batches(len(array), max_batch))))

    def _head_outputs(self, head: str, images: Sequence[ImageSource], embedding: bool,
                      timeout_s: float | None) -> tuple[HeadInfo, dict[str, np.ndarray]]:
        """Outputs with the ``HeadInfo`` they belong to; a version swap mid-call is re-read once, then refused."""
        info = self.info(head)
        for attempt in range(2):
            pixels = batching.prepare(images, info, self.options.max_pixels)
            try:
                return info, self._infer_batched(head, pixels, info.max_batch_size,
                                                  lambda a: batching.pixels_input(self._grpc, a),
                                                  batching.head_outputs(info, embedding), timeout_s, info)
            except (StaleAnswer, ModelNotReadyError) as exc:  # not ready: the pinned version was unloaded
                if attempt == 1:
                    raise HeadChangedError(batching.changed_message(head, self.url, info, exc)) from exc
                info = self.info(head, refresh=True)
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- the API ----------------------------------------------------------------------------------

    def outputs(self, head: str, images: Sequence[ImageSource], embedding: bool = False,
                timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Raw ensemble outputs for N crops: ``probs`` (N, C), plus ``ood_score`` and ``embedding`` when asked/present.

        ``probs`` is in the class order of ``self.info(head)`` as it stands after the call.
        """
        return self._head_outputs(head, images, embedding, timeout_s)[1]

    def probabilities(self, head: str, images: Sequence[ImageSource], timeout_s: float | None = None) -> np.ndarray:
        """(N, C) calibrated probabilities for N crops."""
        return self.outputs(head, images, timeout_s=timeout_s)[PROBS]

    def classify(self, head: str, images: Sequence[ImageSource], top_k: int = 3,
                 thresholds: Thresholds | None = None, timeout_s: float | None = None) -> list[Prediction]:
        """Label, calibrated confidence, top-k and a decision with its reason, per crop."""
        info, out = self._head_outputs(head, images, False, timeout_s)
        return decide(info, out[PROBS], thresholds or Thresholds(), top_k, out.get(OOD_SCORE))

    def similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """(N, P) similarity of each embedding to each prompt, from the head's prompt model (CLIP heads)."""
        info = self.info(head)
        model = info.prompt_model
        if model is None:
            raise ModelNotReadyError(f"head {head!r} ({info.encoder_type}) publishes no prompt_model; "
                                     "only CLIP heads exported with prompts have one")
        if model not in self._prompt_batch:
            config = self._call(f"config of {model!r}",
                                lambda t: self._client.get_model_config(model, client_timeout=t).config)
            self._prompt_batch[model] = int(config.max_batch_size) or 1
        embeddings = batching.finite_embeddings(embeddings, f"embeddings for {model!r}")
        make = lambda a: batching.infer_input(self._grpc, PROMPT_INPUT, np.ascontiguousarray(a, np.float32), "FP32")
        return self._infer_batched(model, embeddings, self._prompt_batch[model], make, [PROMPT_OUTPUT],
                                   timeout_s)[PROMPT_OUTPUT]

    def gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
             timeout_s: float | None = None) -> list[GateResult]:
        """Kept and dropped candidates for ``config.target``, each with its reason."""
        prefilter = self._prefilter.active(self.info(head), config.use_prefilter)
        info, out = self._head_outputs(head, images, prefilter, timeout_s)
        sims = self.similarities(head, out[EMBEDDING], timeout_s) if prefilter else None
        preds = decide(info, out[PROBS], config.thresholds, ood_scores=out.get(OOD_SCORE))
        return gate(info, preds, config, sims)

    def estimate(self, head: str, candidates: int, batch_size: int = 8, repeats: int = 5) -> ComputeEstimate:
        """Expected cost of gating ``candidates`` crops, from latencies measured now on this server."""
        info = self.info(head)
        probe = EstimateProbe.for_head(info, batch_size)
        b = probe.batch_size
        preprocess_s = median_seconds(lambda: batching.prepare([probe.image] * b, info), repeats) / b
        run_head = lambda: self._infer(head, [batching.pixels_input(self._grpc, probe.pixels)], [PROBS], None,
                                       info.version)
        run_head()  # warm-up: the first request sizes the runtime's buffers
        head_s = median_seconds(run_head, repeats) / b
        prefilter_s = None
        if self._prefilter.active(info, True):
            self.similarities(head, probe.embeddings)
            prefilter_s = median_seconds(lambda: self.similarities(head, probe.embeddings), repeats) / b
        return ComputeEstimate(head, candidates, preprocess_s, head_s, prefilter_s, b)
