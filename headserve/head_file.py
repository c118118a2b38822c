"""A head artifact as the module that serves it: ``save_head`` and ``load_head``.

``headserve.artifact`` reads and writes the two files (meta.json, head.safetensors) without torch, for
the client side and for validation; this module is the one place that turns them into a
``ServingHead`` and back, so training, legacy import, export, the demo, the bench and the tests all
rebuild the same module: its classifier kind and shape from ``meta.head_config``, its weights and OOD
statistics from the safetensors file, the temperature from meta.json, in eval mode.

meta.json records the sha256 of the weights file saved with it, and loading checks it, so the two
files of one artifact cannot be paired with another's (artifacts saved before load with a warning).

The temperature is stored once, in meta.json, because that is where the ensemble config and the
report read it. Artifacts written before carry it a second time as a ``temperature`` tensor; they
keep loading, and where the two copies disagree loading fails naming both values, since picking one
would silently change every probability the head serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from headserve.artifact import META_FILE, WEIGHTS_FILE, HeadMeta, load_meta, load_tensors, save_artifact
from headserve.errors import ArtifactError
from headserve.head import HeadConfig, ServingHead, build_serving_head

# The ServingHead buffer that meta.json's temperature fills; older weights files carry it too.
TEMPERATURE_KEY = "temperature"


def save_head(directory: str | os.PathLike, meta: HeadMeta, head: ServingHead) -> Path:
    """Write ``head`` with ``meta`` as an artifact at ``directory``, atomically; returns ``directory``.

    The weights file holds every tensor of the module except the temperature, which meta.json
    holds. A module whose temperature or shape disagrees with ``meta`` is refused before anything is
    written, since the artifact would otherwise serve numbers other than the ones its trainer saw.
    """
    where = f"head {meta.name!r} being saved to {directory}"
    stored = float(head.temperature.detach().cpu().reshape(-1)[0])
    if np.float32(meta.temperature) != np.float32(stored):
        raise ArtifactError(
            f"{where}: meta.temperature {meta.temperature!r} disagrees with the module's temperature {stored!r}; "
            "set the temperature the head should serve in both before saving")
    _check_shape(meta, head.head.config, where)
    tensors = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items() if k != TEMPERATURE_KEY}
    return save_artifact(directory, meta, tensors)


def load_head(directory: str | os.PathLike) -> tuple[HeadMeta, ServingHead]:
    """The artifact at ``directory`` as its metadata and its serving module (eval mode, on the CPU).

    The weights must be the file meta.json was saved with (its recorded sha256): weights copied in from
    another artifact of the same shape would load and serve another head's numbers under this one's name.
    """
    meta = load_meta(directory)
    return meta, serving_head(meta, load_tensors(directory, meta), origin=str(Path(directory) / WEIGHTS_FILE))


def serving_head(meta: HeadMeta, tensors: Mapping[str, np.ndarray], origin: str | None = None) -> ServingHead:
    """Rebuild the serving module from ``meta`` and the weights file's ``tensors`` (read from ``origin``).

    For callers that already hold the tensors (export reads the weights before it touches a
    repository); ``load_head`` is this plus reading the files.
    """
    origin = origin or f"the weights of head {meta.name!r}"
    if not meta.head_config:
        raise ArtifactError(f"{origin}: the head's {META_FILE} records no head_config, so its layers are unknown; "
                            "retrain the head with `headserve train` or import it with `headserve import-legacy`")
    try:
        config = HeadConfig.from_dict(meta.head_config)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{origin}: head_config {meta.head_config} in {META_FILE} is not a head's shape "
                            f"({exc}); retrain the head with `headserve train`") from None
    _check_shape(meta, config, origin)
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    state[TEMPERATURE_KEY] = _temperature(meta, state.pop(TEMPERATURE_KEY, None), origin)
    try:
        return build_serving_head(config, state)
    except RuntimeError as exc:  # load_state_dict: missing, unexpected or mis-shaped tensors
        raise ArtifactError(f"{origin}: the weights do not fit head_config {config.to_dict()} "
                            f"({' '.join(str(exc).split())[:300]}); the weights and {META_FILE} do not belong "
                            "together: copy the artifact again or retrain it with `headserve train`") from None


def _temperature(meta: HeadMeta, stored: torch.Tensor | None, origin: str) -> torch.Tensor:
    """meta.json's temperature as the module's buffer (1,); an older file's copy must agree with it."""
    t = np.float32(meta.temperature)
    if not (np.isfinite(t) and t > 0):
        raise ArtifactError(f"{origin}: meta.json's temperature {meta.temperature!r} is not a positive number; "
                            "probabilities are softmax(logits / T): retrain or recalibrate the head")
    if stored is not None:
        values = stored.reshape(-1).tolist()
        if len(values) != 1 or np.float32(values[0]) != t:
            raise ArtifactError(
                f"{origin} stores temperature {values} but meta.json says {meta.temperature!r}; the artifact "
                "contradicts itself, so neither is served: copy the artifact again or retrain it")
    return torch.tensor([t])


def _check_shape(meta: HeadMeta, config: HeadConfig, where: str) -> None:
    """The head's shape must match what meta.json says it reads and emits."""
    if (config.in_dim, config.num_classes) != (meta.embedding_dim, len(meta.classes)):
        raise ArtifactError(
            f"{where}: head_config has in_dim {config.in_dim} and {config.num_classes} classes, but meta.json "
            f"has embedding_dim {meta.embedding_dim} and {len(meta.classes)} classes; the two do not describe "
            "the same head: retrain it with `headserve train`")


__all__ = ["TEMPERATURE_KEY", "load_head", "save_head", "serving_head"]
