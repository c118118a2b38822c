"""What the clients report about each answered batch, for whoever watches (metrics, logs, tests)."""

from __future__ import annotations

from typing import Protocol, Sequence

from headserve.client.decision import Prediction
from headserve.client.discovery import HeadInfo


class Observer(Protocol):
    """Told about every batch a client decided and every request that failed; must not raise or block."""

    def observe_batch(self, info: HeadInfo, predictions: Sequence[Prediction], seconds: float) -> None:
        """``predictions`` of one request to ``info.name`` at ``info.version``; ``seconds`` its wall time."""

    def observe_error(self, head: str, error: BaseException) -> None:
        """A request to ``head`` that raised ``error`` (a headserve.client.errors type) to the caller."""


class Observers:
    """Several observers as one (metrics and a drift window, say): each is told in turn, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def observe_batch(self, info: HeadInfo, predictions: Sequence[Prediction], seconds: float) -> None:
        for observer in self.observers:
            observer.observe_batch(info, predictions, seconds)

    def observe_error(self, head: str, error: BaseException) -> None:
        for observer in self.observers:
            observer.observe_error(head, error)
