"""Where embeddings and heads are computed, and at which precision.

``--device auto|cpu|cuda|cuda:N|mps`` picks a torch device the way users' earlier tooling did (CUDA,
then Apple's MPS, then the CPU) and refuses a device that is not there with the devices that are.
``--precision fp32|bf16|fp16`` runs the frozen encoder under autocast on that device. Lower precisions
are never trusted blindly: ``check_precision`` compares a sample's embeddings against fp32 and refuses
the run beyond the precision's tolerance (DINOv2/DINOv3 in fp16 are known to overflow).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from headserve.errors import DeviceError, PrecisionError


@dataclass(frozen=True)
class Precision:
    """One compute precision of the frozen encoder."""

    name: str  # "fp32", "bf16" or "fp16": the option's value and the cache key's suffix
    dtype: torch.dtype  # autocast dtype (fp32 runs without autocast)
    min_cosine: float  # the sample's embeddings must keep at least this cosine similarity to fp32's
    note: str  # what it is for, in `--help`


# Tolerances: bf16 keeps 8 mantissa bits, fp16 10; a ViT's L2-normalised embedding keeps a cosine of
# about 0.999 to fp32 under either when nothing overflows. An overflow gives NaN or a cosine far below.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", torch.float32, 1.0, "full precision; the reference"),
    Precision("bf16", torch.bfloat16, 0.995, "bfloat16 autocast: fp32's range, about 2x faster on recent GPUs"),
    Precision("fp16", torch.float16, 0.998, "float16 autocast: can overflow (DINOv2/DINOv3); checked on a sample"),
)}

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise PrecisionError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}") from None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """What this machine offers, in `--device` spelling."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(text: str = "auto", source: str = "`device`") -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an explicit device must exist here."""
    text = text.strip().lower()
    if not DEVICE_PATTERN.match(text):
        raise DeviceError(f"{source} {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{source} {text}: torch sees no CUDA device on this machine "
                              f"(available: {', '.join(available_devices())}); use `device` cpu or auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{source} {text}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(available: {', '.join(available_devices())})")
        return torch.device("cuda", index)
    if text == "mps" and not _mps_available():
        raise DeviceError(f"{source} mps: Apple's Metal backend is not available here "
                          f"(available: {', '.join(available_devices())})")
    return torch.device(text)


def check_supported(device: torch.device, precision: Precision) -> None:
    """Refuse combinations torch cannot run, before any work is done."""
    if precision.name == "fp32":
        return
    if device.type == "cuda" and precision.dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"`precision` bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                             "use fp16 or fp32")
    if device.type == "mps" and precision.dtype is torch.bfloat16:
        raise PrecisionError("`precision` bf16 is not supported on mps; use fp16 or fp32")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Run the encoder at ``precision``; fp32 runs as written."""
    if precision.name == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=precision.dtype):
        yield


def check_precision(reference: np.ndarray, candidate: np.ndarray, precision: Precision, where: str) -> float:
    """Compare a sample's L2-normalised embeddings at ``precision`` with fp32's; returns the lowest cosine.

    Raises ``PrecisionError`` naming the precision, the worst cosine and its tolerance when any
    embedding is not finite or falls below the tolerance.
    """
    if precision.name == "fp32" or len(reference) == 0:
        return 1.0
    finite = np.isfinite(candidate).all(axis=1)
    if not finite.all():
        raise PrecisionError(
            f"{where}: {int((~finite).sum())} of {len(candidate)} sample embeddings at {precision.name} are NaN or "
            f"infinite (an activation overflowed); run with `precision` fp32 or bf16")
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    cand = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    worst = float((ref * cand).sum(axis=1).min())
    if worst < precision.min_cosine:
        raise PrecisionError(
            f"{where}: embeddings at {precision.name} leave fp32's tolerance on a sample of {len(reference)} crops "
            f"(lowest cosine similarity {worst:.5f} < {precision.min_cosine}); run with `precision` fp32"
            + (" or bf16" if precision.name == "fp16" else ""))
    return worst
