"""The embedding cache: keyed by encoder and crop content, written only after a batch succeeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headserve.train.cache import EmbeddingCache


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def fake_encoder(pixels: np.ndarray) -> np.ndarray:
    """A deterministic stand-in encoder: the mean colour and brightness of each crop."""
    x = pixels.reshape(len(pixels), -1, 3).astype(np.float32).mean(1)
    return np.c_[x, x.sum(1, keepdims=True)]


def test_second_run_computes_nothing_and_reports_full_hit_rate(tmp_path: Path):
    px = crops(10)
    first = EmbeddingCache(tmp_path, "clip", "tiny", "fp1")
    a = first.embed(px, fake_encoder, batch_size=4)
    second = EmbeddingCache(tmp_path, "clip", "tiny", "fp1")
    b = second.embed(px, lambda p: pytest.fail("a cached crop was recomputed"), batch_size=4)
    assert np.array_equal(a, b) and second.stats.hit_rate == 1.0 and first.stats.hit_rate == 0.0
    assert "hit rate 100%" in second.stats.summary()


def test_clip_and_dinov3_entries_never_mix(tmp_path: Path):
    px = crops(3)
    EmbeddingCache(tmp_path, "clip", "tiny", "fp").embed(px, fake_encoder)
    dino = EmbeddingCache(tmp_path, "dinov3", "tiny", "fp")
    dino.embed(px, fake_encoder)
    assert dino.stats.hits == 0 and dino.stats.misses == 3
    assert dino.dir != EmbeddingCache(tmp_path, "clip", "tiny", "fp").dir


def test_another_fingerprint_misses(tmp_path: Path):
    px = crops(3)
    EmbeddingCache(tmp_path, "clip", "tiny", "fp1").embed(px, fake_encoder)
    other = EmbeddingCache(tmp_path, "clip", "tiny", "fp2")
    other.embed(px, fake_encoder)
    assert other.stats.hits == 0


def test_an_interrupted_run_keeps_finished_batches_only_and_the_next_run_resumes(tmp_path: Path):
    px = crops(10)
    calls = []

    def dies_on_second_batch(p: np.ndarray) -> np.ndarray:
        # The fault (an encoder crashing mid-run) is injected here; it cannot be produced on demand otherwise.
        calls.append(len(p))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return fake_encoder(p)

    with pytest.raises(RuntimeError, match="out of memory"):
        EmbeddingCache(tmp_path, "clip", "tiny", "fp").embed(px, dies_on_second_batch, batch_size=4)
    entries = list(tmp_path.rglob("*.npy"))
    assert len(entries) == 4 and not list(tmp_path.rglob(".*"))  # one whole batch, no temp files
    resumed = EmbeddingCache(tmp_path, "clip", "tiny", "fp")
    out = resumed.embed(px, fake_encoder, batch_size=4)
    assert (resumed.stats.hits, resumed.stats.misses) == (4, 6)
    assert np.allclose(out, fake_encoder(px))


def test_a_damaged_entry_is_recomputed(tmp_path: Path):
    px = crops(1)
    cache = EmbeddingCache(tmp_path, "clip", "tiny", "fp")
    cache.embed(px, fake_encoder)
    next(tmp_path.rglob("*.npy")).write_bytes(b"garbage")
    again = EmbeddingCache(tmp_path, "clip", "tiny", "fp")
    assert np.allclose(again.embed(px, fake_encoder), fake_encoder(px)) and again.stats.misses == 1
