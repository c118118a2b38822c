"""Importing heads of the earlier system: scikit-learn LogisticRegression pickles with a sidecar.

A legacy head is ``NAME.pkl`` (a fitted ``LogisticRegression``) beside ``NAME.meta.pkl`` (a dict with
fields such as ``clip_model``, ``classes`` or ``labelmap``, ``embedding_dim``, ``proba_mode`` and
``background_indices``). Unpickling runs code from the file, so it happens only when the caller
passes ``trust_pickle=True`` (``--trust-pickle``); the result is a pickle-free artifact (meta.json +
safetensors) with a logreg head whose logits equal ``decision_function`` and whose probabilities equal
``predict_proba`` (multinomial softmax). Heads trained before encoder metadata existed are CLIP heads.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from headserve.artifact import HeadMeta
from headserve.class_names import check_class_names
from headserve.contract import EncoderIdentity
from headserve.encoders import DEFAULT_ENCODER_TYPE
from headserve.errors import ArtifactError
from headserve.head import HeadConfig, MLPHead, ServingHead, save_head

TRUST_NOTICE = ("unpickling runs code stored in the file; pass --trust-pickle only for files you made or trust "
                "(the imported artifact is pickle-free)")


def _sidecar(pkl_path: Path) -> Path:
    return pkl_path.with_name(pkl_path.name[: -len(".pkl")] + ".meta.pkl")


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; a legacy head is NAME.pkl with NAME.meta.pkl beside it")
    try:
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - only behind the explicit trust_pickle opt-in
    except Exception as exc:  # any unpickling failure is a bad file, whatever it raised
        raise ArtifactError(f"{path}: not a readable pickle ({exc.__class__.__name__}: {exc})") from None


def _classes(meta: Mapping[str, Any], origin: Path) -> list[str]:
    names = meta.get("classes", meta.get("labelmap"))
    if isinstance(names, Mapping):  # {index: name} or {name: index}
        items = list(names.items())
        if all(isinstance(k, (int, np.integer)) for k, _ in items):
            names = [names[k] for k in sorted(names)]
        else:
            names = [k for k, _ in sorted(items, key=lambda kv: int(kv[1]))]
    if not names:
        raise ArtifactError(f"{origin}: no 'classes' or 'labelmap'; the sidecar must name the classes")
    return check_class_names(names, f"{origin} 'classes'")


def _registry_name(encoder_type: str, model: str) -> str | None:
    """The registry key of the head's encoder when the registry holds it (export needs it)."""
    from headserve.encoders import get_encoder
    from headserve.errors import UnknownEncoderError

    try:
        return get_encoder(f"{encoder_type}:{model}").name
    except UnknownEncoderError:
        return None


def import_legacy(pkl_path: str | Path, out_dir: str | Path, trust_pickle: bool) -> Path:
    """Convert ``pkl_path`` (+ its ``.meta.pkl``) into an artifact at ``out_dir``; returns ``out_dir``."""
    pkl_path = Path(pkl_path)
    if not trust_pickle:
        raise ArtifactError(f"refusing to unpickle {pkl_path}: {TRUST_NOTICE}")
    if not pkl_path.name.endswith(".pkl"):
        raise ArtifactError(f"{pkl_path}: a legacy head file ends in .pkl")
    side_path = _sidecar(pkl_path)
    model, side = _unpickle(pkl_path), _unpickle(side_path)
    if not isinstance(side, Mapping):
        raise ArtifactError(f"{side_path}: expected a dict of head metadata, got {type(side).__name__}")
    coef, intercept = getattr(model, "coef_", None), getattr(model, "intercept_", None)
    if coef is None or intercept is None:
        raise ArtifactError(f"{pkl_path}: {type(model).__name__} has no coef_/intercept_; expected a fitted "
                            "scikit-learn LogisticRegression")
    coef, intercept = np.asarray(coef, np.float32), np.asarray(intercept, np.float32)
    classes = _classes(side, side_path)
    if coef.shape[0] == 1 and len(classes) == 2:  # binary: sklearn keeps one row; softmax over (-z/2, z/2) matches
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
    dim = int(side.get("embedding_dim", coef.shape[1]))
    if coef.shape != (len(classes), dim):
        raise ArtifactError(f"{pkl_path}: weights have shape {coef.shape}, but {side_path} names {len(classes)} "
                            f"classes of embedding_dim {dim}; the two files do not belong together")
    config = HeadConfig(in_dim=dim, num_classes=len(classes))
    head = ServingHead(MLPHead(config))
    head.head.out.weight.data.copy_(torch.from_numpy(coef))
    head.head.out.bias.data.copy_(torch.from_numpy(intercept))
    proba_mode = str(side.get("proba_mode", "softmax"))
    model_name = side.get("clip_model", side.get("encoder_model"))
    if not model_name:
        raise ArtifactError(f"{side_path}: no 'clip_model' (or 'encoder_model'); the sidecar must name the encoder")
    encoder_type = str(side.get("encoder_type", DEFAULT_ENCODER_TYPE))
    meta = HeadMeta(
        name=str(side.get("name", pkl_path.name[: -len(".pkl")])),
        encoder=EncoderIdentity(encoder_type, str(model_name), dim, name=_registry_name(encoder_type, str(model_name))),
        classes=classes,
        background_indices=[int(i) for i in side.get("background_indices", side.get("bg_indices", []))],
        head_type="logreg",
        head_config=config.to_dict(),
        extra={"imported_from": str(pkl_path), "legacy_proba_mode": proba_mode},
    )
    return save_head(out_dir, meta, head)
