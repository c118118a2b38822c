"""Heads built from other heads for the hot-swap tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


def permuted_head(artifact: Path, out: Path, order: tuple[int, ...]) -> Path:
    """The same head with classes (and every per-class tensor row) in ``order``: each crop keeps its true class
    *name* under both heads while its probability *index* moves, so a client that decoded one head's answer with
    the other's names would label it wrongly."""
    from headserve.head import load_head, save_head

    meta, head = load_head(artifact)
    n = len(meta.classes)
    head.load_state_dict({k: (v[list(order)] if v.ndim >= 1 and v.shape[0] == n else v)
                          for k, v in head.state_dict().items()})
    meta = replace(meta, classes=[meta.classes[i] for i in order],
                   background_indices=[order.index(b) for b in meta.background_indices])
    return save_head(out, meta, head)
