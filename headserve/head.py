"""Classifier heads on frozen embeddings, and the calibrated graph that serving runs.

``MLPHead`` is the trainable part (``hidden=()`` makes it logistic regression); its last layer is a
classifier from ``CLASSIFIERS``: a plain linear layer, or ArcFace's cosine classifier (Deng et al.,
2019), whose logits are ``s * cos(feature, class weight)`` when serving and which learns with an
additive angular margin ``m`` on the target class. ``ServingHead`` wraps
a trained head with what inference needs and training does not: the temperature and the softmax.
Export traces ``ServingHead``, so the served probabilities are the trainer's own, to float precision.

``save_head`` and ``load_head`` (below) turn an artifact into a ``ServingHead`` and back.
``headserve.artifact`` reads and writes its two files (meta.json, head.safetensors) without torch, for
the client side and for validation; this is the one place that rebuilds the module from them, so
training, legacy import, export, the demo, the bench and the tests all serve the same one: its
classifier kind and shape from ``meta.head_config``, its weights and OOD statistics from the
safetensors file, the temperature from meta.json, in eval mode.

meta.json records the sha256 of the weights file saved with it, and loading checks it, so the two
files of one artifact cannot be paired with another's (artifacts saved before load with a warning).

The temperature is stored once, in meta.json, because that is where the ensemble config and the
report read it. Artifacts written before carry it a second time as a ``temperature`` tensor; they
keep loading, and where the two copies disagree loading fails naming both values, since picking one
would silently change every probability the head serves.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headserve.artifact import META_FILE, WEIGHTS_FILE, HeadMeta, load_meta, load_tensors, save_artifact
from headserve.errors import ArtifactError, ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a head; stored in meta.json so export can rebuild the module before loading weights."""

    in_dim: int  # embedding width of the encoder
    num_classes: int  # foreground + background classes, in meta.json order
    hidden: tuple[int, ...] = ()  # hidden layer widths; () is logistic regression
    activation: str = "relu"  # "relu" or "gelu"
    layernorm: bool = False  # LayerNorm after each hidden Linear (the recipe's GELU+LN blocks)
    dropout: float = 0.0  # dropout after each hidden block, training only
    standardize: bool = False  # subtract the stored embedding mean and divide by its std first
    classifier: str = "linear"  # last layer: "linear" or "arcface" (cosine classifier); see CLASSIFIERS
    scale: float = 30.0  # ArcFace logit scale s: logits are s * cosine (unused by "linear")

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}").about(
                "activation", self.activation)
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier {self.classifier!r} is not one of {sorted(CLASSIFIERS)}").about(
                "classifier", self.classifier)
        if not self.scale > 0:
            raise ConfigError(f"ArcFace scale {self.scale} must be positive").about("scale", self.scale)
        if self.in_dim <= 0:
            raise ConfigError(f"a head needs in_dim > 0 and at least 2 classes (got in_dim {self.in_dim})").about(
                "in_dim", self.in_dim)
        if self.num_classes < 2:
            raise ConfigError(f"a head needs in_dim > 0 and at least 2 classes (got num_classes "
                              f"{self.num_classes})").about("num_classes", self.num_classes)

    @property
    def head_type(self) -> str:
        return "mlp" if self.hidden else "logreg"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadConfig":
        values = dict(data)
        values["hidden"] = tuple(int(h) for h in values.get("hidden", ()))
        return cls(**values)


class LinearClassifier(nn.Linear):
    """The usual last layer; ``margin`` is accepted for a uniform interface and ignored."""

    def __init__(self, width: int, config: HeadConfig) -> None:
        super().__init__(width, config.num_classes)

    def train_logits(self, feats: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
        return self(feats)

    def magnitude(self, feats: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        """``sum_i |w_ci f_i| + |b_c|``: the size of what each logit adds up, which its rounding grows with."""
        return feats.abs() @ self.weight.abs().t() + self.bias.abs()


class CosineClassifier(nn.Module):
    """ArcFace's classifier: ``s * cos(theta_c)`` between the feature and class weight ``c``.

    Only directions count, so a class's logit cannot grow by growing its weight norm, which is
    how a linear layer over-scores frequent classes. Training widens the angular gap between
    classes by scoring the target class at ``cos(theta + m)`` (``train_logits``); serving scores
    every class at ``cos(theta)``, so the exported graph is a normalise and one matrix product.
    """

    def __init__(self, width: int, config: HeadConfig) -> None:
        super().__init__()
        self.scale = config.scale
        self.weight = nn.Parameter(torch.empty(config.num_classes, width))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, feats: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        return F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        return self.scale * self.cosine(feats)

    def magnitude(self, feats: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        """``s * sum_i |f_i w_ci|`` of the unit vectors: the size of what each logit adds up (at most ``s``)."""
        return self.scale * (F.normalize(feats, dim=1).abs() @ F.normalize(self.weight, dim=1).abs().t())

    def train_logits(self, feats: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
        """Logits with the additive angular margin ``margin`` (radians) on the target mass.

        ``target`` (B, C) is one-hot or mixed (mixup): each class gets ``margin`` times its share
        of the target, which is exactly ArcFace for one-hot rows. Past ``theta + m > pi`` the
        cosine would rise again, so there the logit continues as ``cos(theta) - m sin(m)``, the same
        monotonic extension as pytorch-metric-learning's ArcFaceLoss.
        """
        cos = self.cosine(feats)
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        m = margin * target
        with_margin = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - m * torch.sin(m))
        return self.scale * torch.where(m > 0, with_margin, cos)  # classes with no target mass: exactly as served


# classifier name -> the last layer's class; HeadConfig.classifier picks one and meta.json records it.
CLASSIFIERS: dict[str, type[nn.Module]] = {"linear": LinearClassifier, "arcface": CosineClassifier}


# A standardised feature's scale is at least a tenth of the median feature's. An embedding dimension that
# barely moves on the training crops (std 1e-6) would otherwise be divided by its tiny std at serving, so a
# crop whose embedding moves there by an ordinary 0.01 lands 10^4 standard deviations out and gets a
# confident answer from a direction the head never saw vary.
STD_FLOOR_SHARE = 0.1


def floored_std(std: np.ndarray) -> np.ndarray:
    """Per-feature scales for standardisation: ``std``, raised to ``STD_FLOOR_SHARE`` of its median (and 1e-6).

    The one rule for every head that standardises (the gradient-trained MLP and the tuned scikit-learn
    linear head), applied before fitting so the weights are learnt on the inputs the served head computes.
    """
    std = np.asarray(std, dtype=np.float64)
    floor = max(1e-6, STD_FLOOR_SHARE * float(np.median(std))) if std.size else 1e-6
    return np.maximum(std, floor)


class MLPHead(nn.Module):
    """embedding -> [standardise] -> (Linear [-> LayerNorm] -> act -> Dropout)* -> classifier -> logits."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("emb_mean", torch.zeros(config.in_dim))
        self.register_buffer("emb_std", torch.ones(config.in_dim))
        blocks: list[nn.Module] = []
        width = config.in_dim
        for h in config.hidden:
            blocks.append(nn.Linear(width, h))
            if config.layernorm:
                blocks.append(nn.LayerNorm(h))
            blocks.append(ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                blocks.append(nn.Dropout(config.dropout))
            width = h
        self.body = nn.Sequential(*blocks)
        self.out = CLASSIFIERS[config.classifier](width, config)

    def features(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, H)
        if self.config.standardize:
            emb = (emb - self.emb_mean) / self.emb_std
        return self.body(emb)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.out(self.features(emb))

    def logit_magnitude(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        """Per logit, the size of the terms its last layer sums (``magnitude`` of the classifier): float32
        rounding of a logit grows with this, not with the logit, which can be small by cancellation."""
        return self.out.magnitude(self.features(emb))

    def train_logits(self, emb: torch.Tensor, target: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """Logits for the training loss: ``forward`` plus the classifier's margin on ``target`` (B, C)."""
        return self.out.train_logits(self.features(emb), target, margin)


class ServingHead(nn.Module):
    """A trained head plus what inference needs and training does not.

    ``logits`` are the head's raw scores plus any post-hoc logit bias (logit adjustment at
    inference stores ``-tau * log prior`` there); ``probs`` are ``softmax(logits / T)`` with the
    temperature fitted on held-out data; ``ood_score`` is ``log1p(min_c d_c^2 / D)``, where ``d_c`` is
    the Mahalanobis distance of the embedding to class prototype ``c`` under the shared covariance of
    the training embeddings. The log keeps the score near 1 in scale, so float32 export stays exact.
    A head with no OOD statistics (zeros) scores every crop 0.
    """

    def __init__(self, head: MLPHead, temperature: float = 1.0) -> None:
        super().__init__()
        self.head = head
        c, d = head.config.num_classes, head.config.in_dim
        self.register_buffer("temperature", torch.tensor([float(temperature)]))
        self.register_buffer("logit_bias", torch.zeros(c))
        # Whitening W with W W^T = precision, and the class prototypes already whitened (mu @ W).
        self.register_buffer("ood_whiten", torch.zeros(d, d))
        self.register_buffer("ood_protos", torch.zeros(c, d))

    def ood_score(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 1)
        z = emb @ self.ood_whiten  # (B, D)
        d2 = (z[:, None, :] - self.ood_protos[None, :, :]).pow(2).sum(-1)  # (B, C)
        return torch.log1p(d2.min(dim=1, keepdim=True).values / emb.shape[1])

    def logit_magnitude(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        """The served logits' rounding scale: the head's ``logit_magnitude`` plus the logit bias added to it."""
        return self.head.logit_magnitude(emb) + self.logit_bias.abs()

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``headserve.contract.SCORE_OUTPUTS`` in its order, which export uses to name the ONNX outputs, the
        Triton config and the ensemble wiring (the exported graph adds the head's id after them)."""
        logits = self.head(emb) + self.logit_bias  # (B, C)
        probs = torch.softmax(logits / self.temperature, dim=-1)  # (B, C)
        return logits, probs, self.ood_score(emb)


def build_serving_head(config: HeadConfig, state: Mapping[str, torch.Tensor] | None = None) -> ServingHead:
    """Rebuild a ServingHead from its config and (optionally) a state dict held in memory, in eval mode.

    Artifacts on disk go through ``headserve.head.load_head``, which fills the temperature from
    meta.json before calling this.
    """
    module = ServingHead(MLPHead(config))
    if state is not None:
        state = dict(state)
        for key in ("ood_whiten", "ood_protos"):  # heads saved before the OOD score existed
            state.setdefault(key, getattr(module, key))
        module.load_state_dict(state)
    return module.eval()


__all__ = ["CLASSIFIERS", "CosineClassifier", "HeadConfig", "LinearClassifier", "MLPHead", "ServingHead",
           "build_serving_head"]


# ---------------------------------------------------------------------------------------------
# The head as an artifact: save_head / load_head

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
