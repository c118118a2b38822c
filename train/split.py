"""Splits grouped by source image: crops of one image never sit on both sides of a split."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def group_split(groups: Sequence[str], test_size: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with whole groups on one side (scikit-learn's GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(groups))
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(idx, groups=np.asarray(groups)))
    return np.sort(train), np.sort(test)


def declared_split(images: Sequence[Path], declared: Mapping[str, Sequence[Path]]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of rows by the folder their image sits in: data.yaml's ``train`` and ``val``.

    ``val`` becomes the test split the report measures; rows in neither folder (e.g. a ``test:`` folder) are
    in neither result.
    """
    def under(path: Path, folders: Sequence[Path]) -> bool:
        return any(path.is_relative_to(f) for f in folders)

    resolved = [p.resolve() for p in images]
    test = np.array([i for i, p in enumerate(resolved) if under(p, declared["val"])], dtype=np.int64)
    train = np.array([i for i, p in enumerate(resolved) if under(p, declared["train"]) and not under(p, declared["val"])],
                     dtype=np.int64)
    return train, test
