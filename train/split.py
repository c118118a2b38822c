"""Splits grouped by source image: crops of one image never sit on both sides of a split."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def group_split(groups: Sequence[str], test_size: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with whole groups on one side (scikit-learn's GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(groups))
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(idx, groups=np.asarray(groups)))
    return np.sort(train), np.sort(test)
