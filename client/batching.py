"""How one call's rows become requests: slices no larger than the model's max batch size, joined back in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from headserve.client.errors import BadInputError


@dataclass(frozen=True)
class BatchPlan:
    """The requests one call sends: consecutive row slices, each at most ``max_batch`` rows."""

    rows: int  # rows (crops or embeddings) the call carries
    max_batch: int  # the model's max batch size; every request holds at most this many rows

    def __post_init__(self) -> None:
        if self.rows < 0 or self.max_batch < 1:
            raise BadInputError(f"a batch plan of {self.rows} rows in batches of {self.max_batch} is impossible; "
                                "rows must be >= 0 and the max batch size >= 1")

    @property
    def slices(self) -> list[slice]:
        """Slices covering ``range(rows)`` in order, all full but the last."""
        return [slice(i, min(i + self.max_batch, self.rows)) for i in range(0, self.rows, self.max_batch)]

    def split(self, array: np.ndarray) -> list[np.ndarray]:
        """``array``'s rows, one part per request."""
        return [array[s] for s in self.slices]

    def join(self, answers: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The answers of every request, concatenated per output back into the call's row order."""
        if not answers:
            return {}
        return {name: np.concatenate([a[name] for a in answers]) for name in answers[0]}
