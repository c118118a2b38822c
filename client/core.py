"""Everything a client decides, with no I/O: the sync and asyncio clients are transports under this core.

Each call is a plan (a generator, see ``headserve.client.operations``) that yields what it needs from the
server and is resumed with the answer. The core owns the rules the two clients used to repeat: how a head
is discovered and cached, how crops become batched requests pinned to the head's version, how answers are
checked (another version or width: re-read the head once, then ``HeadChangedError``), decisions, gating,
the prefilter, the compute estimate, and what the observer is told. The transports own how a request
travels: the gRPC client, deadlines and retries, the concurrency limit, cancellation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from headserve.client.batching import BatchPlan
from headserve.client.decision import Prediction, Thresholds, decide
from headserve.client.discovery import (
    HeadInfo,
    StaleAnswer,
    check_answer,
    check_rows,
    head_info_from_config,
    latest_version,
)
from headserve.client.errors import BadInputError, ClientError, HeadChangedError, ModelNotReadyError
from headserve.client.estimate import ComputeEstimate, EstimateProbe, median_seconds
from headserve.client.gating import GateConfig, GateResult, gate
from headserve.client.inputs import finite_embeddings, prepare
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
    Tensor,
)
from headserve.client.options import ConnectionOptions
from headserve.client.prefilter import PrefilterPolicy
from headserve.client.regions import empty_outputs, region_inputs, region_requests, require_crop_head
from headserve.contract import EMBEDDING, HEAD_ID, OOD_SCORE, PIXELS, PROBS, PROMPT_OUTPUT
from headserve.preprocess import ImageSource


@dataclass(frozen=True)
class HeadAnswer:
    """The checked answers of one call to a head, with the ``HeadInfo`` they were decoded against."""

    info: HeadInfo  # the head as read when the answers came back
    batches: BatchPlan  # how the call's crops were split into requests
    answers: tuple[Answer, ...]  # one per request, in ``batches.slices`` order

    def outputs(self) -> dict[str, np.ndarray]:
        """Every output, rows in the caller's crop order."""
        return self.batches.join([a.outputs for a in self.answers])


def head_outputs(info: HeadInfo, embedding: bool) -> tuple[str, ...]:
    """Outputs to request from the ensemble: probabilities, plus what the call needs and the head has."""
    names = [PROBS]
    if info.has_ood_score:
        names.append(OOD_SCORE)
    if info.head_id is not None:
        names.append(HEAD_ID)  # checked on every answer: see headserve.contract.HEAD_ID
    if embedding:
        names.append(EMBEDDING)
    return tuple(names)


def changed_message(head: str, url: str, info: HeadInfo, cause: Exception) -> str:
    """Why a call gave up after re-reading a head once: its version kept changing under the call."""
    return (f"head {head!r} on {url} changed while answering, again after it was re-read as version "
            f"{info.version or '?'} ({cause}); no answer was labelled. Retry once the new version is loaded")


class ClientCore:
    """The state one client keeps (head and prompt-model caches, prefilter notices) and the plans of its calls.

    Public plans report a failing call to the observer; the private ones compose into them with ``yield from``
    (a call's head lookup included), so an error reaches the observer once, from the public plan it ends.
    """

    def __init__(self, url: str, options: ConnectionOptions, observer: Observer | None = None) -> None:
        self.url = url  # only to name the server in messages
        self.options = options
        self.observer = observer
        self.heads: dict[str, HeadInfo] = {}  # head -> what it published, as last read
        self.prefilter = PrefilterPolicy()
        self._prompt_batch: dict[str, int] = {}  # prompt model -> its max batch size

    # -- the plans a transport drives, one per public call -----------------------------------------

    def read_head(self, head: str, refresh: bool = False) -> Plan[HeadInfo]:
        """``head``'s info from the cache, or read from its newest ready version (then cached)."""
        return self._observed(head, self._read_head(head, refresh))

    def outputs(self, head: str, images: Sequence[ImageSource], embedding: bool,
                timeout_s: float | None) -> Plan[dict[str, np.ndarray]]:
        return self._observed(head, self._outputs(head, images, embedding, timeout_s))

    def classify(self, head: str, images: Sequence[ImageSource], top_k: int, thresholds: Thresholds | None,
                 timeout_s: float | None) -> Plan[list[Prediction]]:
        return self._observed(head, self._classify(head, images, top_k, thresholds or Thresholds(), timeout_s))

    def region_outputs(self, head: str, image: ImageSource, boxes: Any, embedding: bool,
                       timeout_s: float | None) -> Plan[dict[str, np.ndarray]]:
        return self._observed(head, self._region_outputs(head, image, boxes, embedding, timeout_s))

    def classify_regions(self, head: str, image: ImageSource, boxes: Any, top_k: int, thresholds: Thresholds | None,
                         timeout_s: float | None) -> Plan[list[Prediction]]:
        return self._observed(head, self._classify_regions(head, image, boxes, top_k, thresholds or Thresholds(),
                                                           timeout_s))

    def similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None) -> Plan[np.ndarray]:
        return self._observed(head, self._similarities(head, embeddings, timeout_s))

    def gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
             timeout_s: float | None) -> Plan[list[GateResult]]:
        return self._observed(head, self._gate(head, images, config, timeout_s))

    def estimate(self, head: str, candidates: int, batch_size: int, repeats: int) -> Plan[ComputeEstimate]:
        return self._observed(head, self._estimate(head, candidates, batch_size, repeats))

    # -- discovery ----------------------------------------------------------------------------------

    def _read_head(self, head: str, refresh: bool = False) -> Plan[HeadInfo]:
        if not refresh and head in self.heads:
            return self.heads[head]
        if not (yield ReadReady(head)):
            raise ModelNotReadyError(f"head {head!r} is not ready on {self.url}; check the name, or wait for the "
                                     "server to finish loading it (its repository index lists what it serves)")
        version = latest_version((yield ReadVersions(head)))
        info = head_info_from_config(head, (yield ReadConfig(head, version)), version)
        self.heads[head] = info
        return info

    def _prompt_max_batch(self, model: str) -> Plan[int]:
        if model not in self._prompt_batch:
            config = yield ReadConfig(model)
            self._prompt_batch[model] = int(config.max_batch_size) or 1
        return self._prompt_batch[model]

    # -- requests and the checks on their answers ---------------------------------------------------

    def _head_answer(self, head: str, images: Sequence[ImageSource], embedding: bool,
                     timeout_s: float | None) -> Plan[HeadAnswer]:
        """Answers for crops, pinned to the head's version and checked against it (``_checked_answer``)."""

        def build(info: HeadInfo) -> tuple[BatchPlan, tuple[Request, ...]]:
            require_crop_head(info)
            pixels = prepare(images, info, self.options.max_pixels)  # per read: a new version may resize otherwise
            batches = BatchPlan(len(pixels), info.max_batch_size)
            outputs = head_outputs(info, embedding)
            return batches, tuple(Request(head, (Tensor(PIXELS, part, "UINT8"),), outputs, info.version, timeout_s)
                                  for part in batches.split(pixels))

        return (yield from self._checked_answer(head, build))

    def _checked_answer(self, head: str, build: Callable[[HeadInfo], tuple[BatchPlan, tuple[Request, ...]]],
                        ) -> Plan[HeadAnswer]:
        """The requests ``build`` makes for the head as read, answered and checked against it; a swap mid-call is
        re-read once (and the requests built again from the new version), then refused with ``HeadChangedError``."""
        info = yield from self._read_head(head)
        for attempt in range(2):
            batches, requests = build(info)
            if not requests:  # nothing to ask (an image without boxes)
                return HeadAnswer(info, batches, ())
            try:
                answers = tuple((yield Send(requests)))
                for request, answer in zip(requests, answers):
                    check_rows(head, answer.version, request.rows, request.outputs, answer.outputs)
                    check_answer(info, answer.version, answer.outputs)
                return HeadAnswer(info, batches, answers)
            except (StaleAnswer, ModelNotReadyError) as exc:  # not ready: the pinned version was unloaded
                if attempt == 1:
                    raise HeadChangedError(changed_message(head, self.url, info, exc)) from exc
                info = yield from self._read_head(head, refresh=True)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _outputs(self, head: str, images: Sequence[ImageSource], embedding: bool,
                 timeout_s: float | None) -> Plan[dict[str, np.ndarray]]:
        return (yield from self._head_answer(head, images, embedding, timeout_s)).outputs()

    def _region_answer(self, head: str, image: ImageSource, boxes: Any, embedding: bool,
                       timeout_s: float | None) -> Plan[HeadAnswer]:
        """One request for an image and all its boxes (``client.regions``), checked as crop answers are."""

        def build(info: HeadInfo) -> tuple[BatchPlan, tuple[Request, ...]]:
            inputs = region_inputs(info, image, boxes, self.options.max_pixels)  # per read: the frame may change
            return region_requests(head, info, inputs, head_outputs(info, embedding), timeout_s)

        return (yield from self._checked_answer(head, build))

    def _region_outputs(self, head: str, image: ImageSource, boxes: Any, embedding: bool,
                        timeout_s: float | None) -> Plan[dict[str, np.ndarray]]:
        answer = yield from self._region_answer(head, image, boxes, embedding, timeout_s)
        return answer.outputs() if answer.answers else empty_outputs(answer.info, head_outputs(answer.info, embedding))

    def _similarities(self, head: str, embeddings: np.ndarray, timeout_s: float | None) -> Plan[np.ndarray]:
        info = yield from self._read_head(head)
        model = info.prompt_model
        if model is None:
            raise ModelNotReadyError(f"head {head!r} ({info.encoder_type}) publishes no prompt_model; "
                                     "only CLIP heads exported with prompts have one")
        max_batch = yield from self._prompt_max_batch(model)
        array = finite_embeddings(embeddings, f"embeddings for {model!r}")
        if len(array) == 0:
            raise BadInputError(f"no embeddings given for {model!r}; pass at least one row")
        batches = BatchPlan(len(array), max_batch)
        requests = tuple(Request(model, (Tensor(EMBEDDING, part, "FP32"),), (PROMPT_OUTPUT,), "", timeout_s)
                         for part in batches.split(array))
        answers = yield Send(requests)
        for request, answer in zip(requests, answers):
            check_rows(model, answer.version, request.rows, request.outputs, answer.outputs)
        return batches.join([a.outputs for a in answers])[PROMPT_OUTPUT]

    # -- decisions ----------------------------------------------------------------------------------

    def _decide(self, answer: HeadAnswer, thresholds: Thresholds, top_k: int = 3) -> list[Prediction]:
        out = answer.outputs()
        return decide(answer.info, out[PROBS], thresholds, top_k, out.get(OOD_SCORE))

    def _observe_batches(self, answer: HeadAnswer, predictions: list[Prediction]) -> None:
        """One ``observe_batch`` per request: its crops' predictions and its wall time."""
        if self.observer is None:
            return
        for rows, request in zip(answer.batches.slices, answer.answers):
            self.observer.observe_batch(answer.info, predictions[rows], request.seconds)

    def _classify(self, head: str, images: Sequence[ImageSource], top_k: int, thresholds: Thresholds,
                  timeout_s: float | None) -> Plan[list[Prediction]]:
        answer = yield from self._head_answer(head, images, False, timeout_s)
        predictions = self._decide(answer, thresholds, top_k)
        self._observe_batches(answer, predictions)
        return predictions

    def _classify_regions(self, head: str, image: ImageSource, boxes: Any, top_k: int, thresholds: Thresholds,
                          timeout_s: float | None) -> Plan[list[Prediction]]:
        answer = yield from self._region_answer(head, image, boxes, False, timeout_s)
        if not answer.answers:  # an image without boxes: no decisions, but the thresholds are still checked
            thresholds.check_classes(answer.info)
            return []
        predictions = self._decide(answer, thresholds, top_k)
        self._observe_batches(answer, predictions)
        return predictions

    def _gate(self, head: str, images: Sequence[ImageSource], config: GateConfig,
              timeout_s: float | None) -> Plan[list[GateResult]]:
        prefilter = self.prefilter.active((yield from self._read_head(head)), config.use_prefilter)
        answer = yield from self._head_answer(head, images, prefilter, timeout_s)
        sims = (yield from self._similarities(head, answer.outputs()[EMBEDDING], timeout_s)) if prefilter else None
        predictions = self._decide(answer, config.thresholds)
        results = gate(answer.info, predictions, config, sims)
        self._observe_batches(answer, predictions)
        return results

    # -- the compute estimate -----------------------------------------------------------------------

    def _estimate(self, head: str, candidates: int, batch_size: int, repeats: int) -> Plan[ComputeEstimate]:
        """Latencies measured now, one request at a time so they do not overlap."""
        info = yield from self._read_head(head)
        require_crop_head(info)  # the estimate times crops
        probe = EstimateProbe.for_head(info, batch_size)
        b = probe.batch_size
        preprocess_s = median_seconds(lambda: prepare([probe.image] * b, info), repeats) / b
        request = Request(head, (Tensor(PIXELS, probe.pixels, "UINT8"),), (PROBS,), info.version)
        yield Send((request,))  # warm-up: the first request sizes the runtime's buffers
        head_times = []
        for _ in range(max(1, repeats)):
            head_times.append((yield Send((request,)))[0].seconds)
        prefilter_s = None
        if self.prefilter.active(info, True):
            yield from self._similarities(head, probe.embeddings, None)  # warm-up
            prefilter_times = []
            for _ in range(max(1, repeats)):
                started = time.perf_counter()  # the whole call: its config lookup, check and batches
                yield from self._similarities(head, probe.embeddings, None)
                prefilter_times.append(time.perf_counter() - started)
            prefilter_s = statistics.median(prefilter_times) / b
        return ComputeEstimate(head, candidates, preprocess_s, statistics.median(head_times) / b, prefilter_s, b)

    # -- the observer -------------------------------------------------------------------------------

    def _observed(self, head: str, plan: Plan[T]) -> Plan[T]:
        """``plan``, telling the observer once about the ``ClientError`` it ends with."""
        try:
            return (yield from plan)
        except ClientError as exc:
            if self.observer is not None:
                self.observer.observe_error(head, exc)
            raise
