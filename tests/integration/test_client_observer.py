"""The observer hook against the real local Triton: one report per decided request, one per failed call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

import pytest
from PIL import Image

from headserve.client import (
    AsyncHeadClient,
    BadInputError,
    ConnectionOptions,
    GateConfig,
    HeadClient,
    HeadInfo,
    ModelNotReadyError,
    Observer,
    Prediction,
)

pytestmark = pytest.mark.integration


@dataclass
class Recorder:
    """An observer that keeps what it is told."""

    batches: list[tuple[HeadInfo, list[Prediction], float]] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)

    def observe_batch(self, info: HeadInfo, predictions: Sequence[Prediction], seconds: float) -> None:
        self.batches.append((info, list(predictions), seconds))

    def observe_error(self, head: str, error: BaseException) -> None:
        self.errors.append((head, error))


@pytest.fixture(scope="module")
def crops(trained_heads):
    from headserve.train.dataset import load_crop

    return {enc: [load_crop(o) for o in h.outcome.test_objects] for enc, h in trained_heads.items()}


def _many(images: list, info: HeadInfo) -> list:
    """Enough crops for two full requests and one short one."""
    return (images * (2 * info.max_batch_size + 5))[: 2 * info.max_batch_size + 5]


def test_an_observer_sees_each_request_batch_of_a_classify_call_with_its_predictions(trained_heads, crops, triton):
    recorder = Recorder()
    observer: Observer = recorder  # the recorder satisfies the protocol
    head = trained_heads["dinov3:tiny"].name
    with HeadClient(triton.grpc_url, ConnectionOptions(max_in_flight=2), observer=observer) as client:
        info = client.info(head)
        images = _many(crops["dinov3:tiny"], info)
        preds = client.classify(head, images)
        assert recorder.errors == []
        sizes = [len(p) for _, p, _ in recorder.batches]
        assert sizes == [info.max_batch_size, info.max_batch_size, 5]
        assert all(i.name == head and i.version == info.version and i.version != "" for i, _, _ in recorder.batches)
        assert all(seconds > 0 for _, _, seconds in recorder.batches)
        # In the caller's order: the batches' predictions, joined, are the call's predictions.
        assert [p for _, batch, _ in recorder.batches for p in batch] == preds

        client.probabilities(head, images[:3])  # decides nothing: no batch reported
        assert len(recorder.batches) == 3


def test_an_observer_sees_the_batches_of_a_gate_call(trained_heads, crops, triton):
    recorder = Recorder()
    head = trained_heads["dinov3:tiny"]
    target = head.outcome.meta.classes[0]
    with HeadClient(triton.grpc_url, observer=recorder) as client:
        results = client.gate(head.name, crops["dinov3:tiny"][:4], GateConfig(target))
    assert [len(p) for _, p, _ in recorder.batches] == [4]
    assert recorder.batches[0][1] == [r.prediction for r in results]


def test_an_observer_is_told_once_about_each_failed_call(trained_heads, triton):
    recorder = Recorder()
    head = trained_heads["clip:tiny"].name
    with HeadClient(triton.grpc_url, observer=recorder) as client:
        # The head lookup fails inside the classify call: reported once, not once per layer.
        with pytest.raises(ModelNotReadyError, match="head 'no_such_head' is not ready") as missing:
            client.classify("no_such_head", [Image.new("RGB", (8, 8))])
        with pytest.raises(BadInputError, match="is 1x1 pixels") as tiny:
            client.classify(head, [Image.new("RGB", (1, 1))])
        with pytest.raises(BadInputError, match="no images given"):
            client.outputs(head, [])
    assert [(h, type(e)) for h, e in recorder.errors] == [
        ("no_such_head", ModelNotReadyError), (head, BadInputError), (head, BadInputError)]
    assert recorder.errors[0][1] is missing.value and recorder.errors[1][1] is tiny.value
    assert recorder.batches == []


def test_the_asyncio_client_reports_to_its_observer_as_the_sync_client_does(trained_heads, crops, triton):
    head = trained_heads["dinov3:tiny"].name
    sync_recorder, async_recorder = Recorder(), Recorder()

    async def run() -> list[Prediction]:
        async with AsyncHeadClient(triton.grpc_url, ConnectionOptions(max_in_flight=3),
                                   observer=async_recorder) as c:
            images = _many(crops["dinov3:tiny"], await c.info(head))
            preds = await c.classify(head, images)
            with pytest.raises(ModelNotReadyError):
                await c.classify("no_such_head", images[:1])
            return preds

    got = asyncio.run(run())
    with HeadClient(triton.grpc_url, observer=sync_recorder) as client:
        want = client.classify(head, _many(crops["dinov3:tiny"], client.info(head)))
    assert [(p.label, p.reason) for p in got] == [(p.label, p.reason) for p in want]
    assert [len(p) for _, p, _ in async_recorder.batches] == [len(p) for _, p, _ in sync_recorder.batches]
    assert [p for _, batch, _ in async_recorder.batches for p in batch] == got
    assert [(h, type(e)) for h, e in async_recorder.errors] == [("no_such_head", ModelNotReadyError)]
