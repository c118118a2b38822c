"""Embeddings cached on disk, so a second run (or a sweep) computes nothing it already has.

Layout: ``ROOT/<encoder_type>/<encoder_model>/<fingerprint>[_<engine>][_<precision>]/<key[:2]>/<key>.npy``.
The directory names the encoder family, model, weight+preprocessing fingerprint, the engine (other than
eager PyTorch) and (below fp32, or on another engine) the compute precision, so CLIP and DINOv3 entries,
fp32 and bf16 embeddings, and PyTorch's and OpenVINO's bf16 never mix; the key is
the sha256 of the resized crop's pixels (the image content as the encoder sees it). Entries are
written only after their whole batch was embedded, each through a temp file and a rename, so an
interrupted run leaves whole entries only and the next run resumes from them.

Region mode (``--pooling region``) keeps one entry per image: the (K, D) embeddings of its boxes, keyed by
``region_key`` (the mode, the letterboxed frame's pixels and the boxes in it). Its fingerprint covers the
region spec (resolution, pooling), so region and crop entries also live in different directories.
Entries load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0  # entries read from disk
    misses: int = 0  # entries computed (and written)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def summary(self) -> str:
        return f"embedding cache: {self.hits} hit(s), {self.misses} computed, hit rate {self.hit_rate:.0%}"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part) or "_"


class EmbeddingCache:
    """One encoder's slice of the on-disk cache."""

    def __init__(self, root: str | Path, encoder_type: str, encoder_model: str, fingerprint: str,
                 precision: str = "fp32", engine: str = "torch") -> None:
        # PyTorch keeps the directories it always had, so existing caches stay valid.
        leaf = fingerprint if engine == "torch" else f"{fingerprint}_{engine}_{precision}"
        if engine == "torch" and precision != "fp32":
            leaf = f"{fingerprint}_{precision}"
        self.dir = Path(root) / _safe(encoder_type) / _safe(encoder_model) / _safe(leaf)
        self.stats = CacheStats()

    @staticmethod
    def key(pixels: np.ndarray) -> str:
        """sha256 of one crop's uint8 pixels and shape."""
        h = hashlib.sha256(str(pixels.shape).encode())
        h.update(np.ascontiguousarray(pixels).tobytes())
        return h.hexdigest()

    @staticmethod
    def region_key(pixels: np.ndarray, boxes: np.ndarray) -> str:
        """sha256 of the region mode, one letterboxed frame's uint8 pixels and its float32 frame boxes."""
        h = hashlib.sha256(b"region:" + str(pixels.shape).encode())
        h.update(np.ascontiguousarray(pixels).tobytes())
        h.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
        return h.hexdigest()

    def lookup(self, key: str) -> np.ndarray | None:
        """``get``, counted in ``stats`` as a hit or a miss (a miss is then computed and ``put`` by the caller)."""
        found = self.get(key)
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a damaged entry is recomputed, never trusted
            return None

    def put(self, key: str, emb: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(emb, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def embed(self, pixels: np.ndarray, compute: Callable[[np.ndarray], np.ndarray], batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, D) float32, computing only the crops not cached yet."""
        keys = [self.key(p) for p in pixels]
        found = [self.get(k) for k in keys]
        todo = [i for i, e in enumerate(found) if e is None]
        self.stats.hits += len(keys) - len(todo)
        self.stats.misses += len(todo)
        batches = range(0, len(todo), batch_size)
        if progress and todo:
            from tqdm import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch")
        for start in batches:
            idx = todo[start:start + batch_size]
            emb = compute(pixels[idx])  # the batch must succeed before any of it is written
            for i, e in zip(idx, emb):
                self.put(keys[i], e)
                found[i] = e
        return np.stack(found).astype(np.float32) if found else np.zeros((0, 0), np.float32)
