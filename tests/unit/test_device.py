"""Device selection, precision checks and their messages: the GPU code paths, exercised on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headserve.device import (
    available_devices,
    check_precision,
    get_precision,
    resolve_device,
)
from headserve.errors import DeviceError, PrecisionError


def test_auto_is_the_cpu_on_a_machine_without_cuda_or_mps():
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda", 0)
    else:
        assert resolve_device("auto").type in ("cpu", "mps")
        assert "cuda" not in available_devices()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the message of a machine without CUDA")
def test_cuda_on_a_machine_without_one_names_what_is_available():
    with pytest.raises(DeviceError, match=r"`device` cuda: torch sees no CUDA device .*available: cpu"):
        resolve_device("cuda")


def test_a_misspelt_device_is_refused_with_the_accepted_spellings():
    with pytest.raises(DeviceError, match=r"`device` 'gpu0' is not a device; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu0")


def test_with_two_gpus_auto_picks_the_first_and_a_third_is_refused(monkeypatch):
    # CI has no GPU: the CUDA probes are replaced (the only stand-in in this file) to exercise the selection.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"`device` cuda:2: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_lower_precision_within_tolerance_passes_and_reports_its_lowest_cosine():
    rng = np.random.default_rng(0)
    ref = _unit(rng.standard_normal((16, 64)))
    cand = _unit(ref + 1e-3 * rng.standard_normal(ref.shape))
    worst = check_precision(ref, cand, get_precision("bf16"), "encoder")
    assert 0.995 < worst < 1.0


def test_nan_embeddings_at_fp16_are_refused_with_the_count_and_the_fix():
    ref = _unit(np.ones((4, 8)))
    cand = ref.copy()
    cand[1, 3] = np.nan
    with pytest.raises(PrecisionError, match=r"1 of 4 sample embeddings at fp16 are NaN.*`precision` fp32 or bf16"):
        check_precision(ref, cand, get_precision("fp16"), "encoder")


def test_embeddings_beyond_tolerance_are_refused_with_the_lowest_cosine():
    rng = np.random.default_rng(1)
    ref = _unit(rng.standard_normal((8, 32)))
    cand = _unit(ref + 0.5 * rng.standard_normal(ref.shape))
    with pytest.raises(PrecisionError, match=r"lowest cosine similarity 0\.\d+ < 0\.995"):
        check_precision(ref, cand, get_precision("bf16"), "encoder")


def test_an_unknown_precision_names_the_known_ones():
    with pytest.raises(PrecisionError, match="precision 'int8' is not one of fp32, bf16, fp16"):
        get_precision("int8")
