"""What a training run can set: ``TrainConfig``, torch-free so that `headserve train --help` lists it fast.

The fitting code that reads these knobs is in trainer.py; named presets of them are in profiles.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headserve.errors import ConfigError

# The served head's last layers by name (headserve.head.CLASSIFIERS holds their modules; a unit test keeps both
# in step): named here so that validating a recipe never imports torch.
CLASSIFIER_NAMES = ("linear", "arcface")
CLASS_WEIGHTINGS = ("none", "balanced", "effective")
LOGIT_ADJUSTMENTS = ("none", "train", "infer", "both")
LINEAR_FITS = ("sklearn", "torch")


def knob(default: Any, doc: str) -> Any:
    """A TrainConfig field with the help text that its CLI option (--label-smoothing, ...) shows."""
    return field(default=default, metadata={"help": doc})


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and recipe knobs of one head fit (profiles.py names presets of these)."""

    label_smoothing: float = knob(0.1, "soft targets; 0.1 was the best setting of the earlier sweeps")
    lr: float = knob(1e-3, "AdamW learning rate")
    weight_decay: float = knob(1e-4, "AdamW decoupled weight decay")
    epochs: int = knob(150, "upper bound; early stopping usually ends sooner")
    batch_size: int = knob(256, "embeddings per step")
    patience: int = knob(15, "epochs without validation improvement before stopping")
    calibrate: bool = knob(True, "fit a temperature on the validation split")
    seed: int = knob(42, "fixes initialisation and batch order")
    dropout: float = knob(0.1, "dropout after each hidden block (MLP heads only)")
    gelu_ln: bool = knob(True, "GELU + LayerNorm hidden blocks instead of ReLU")
    standardize: bool = knob(False, "centre/scale embeddings by training stats, stored in the artifact")
    mixup: float = knob(0.0, "Beta(a, a) mixup of embeddings and targets; 0 turns it off (recipe: 0.1)")
    class_weights: str = knob("none", "'none', 'balanced' (inverse frequency) or 'effective' (effective number)")
    effective_beta: float = knob(0.9999, "beta of effective-number weights (1 - beta^n) / (1 - beta)")
    hardmine_epochs: int = knob(0, "final epochs that sample examples in proportion to their loss")
    logit_adjust: str = knob("none",
                             "add tau * log prior in the loss ('train'), subtract it when serving ('infer'), or both")
    logit_tau: float = knob(1.0, "strength of logit adjustment")
    classifier: str = knob("linear", "the head's last layer: 'linear', or 'arcface' (cosine classifier with margin)")
    arcface_margin: float = knob(28.6, "ArcFace additive angular margin m in training, in degrees (0.5 rad)")
    arcface_scale: float = knob(30.0, "ArcFace logit scale s, kept by the served head")
    supcon_weight: float = knob(0.0, "weight of an auxiliary supervised-contrastive loss on the head features")
    supcon_temperature: float = knob(0.1, "SupCon softmax temperature")
    feature_noise: float = knob(0.0, "std of Gaussian noise added to training embeddings")
    feature_scale: float = knob(0.0, "per-channel scaling of training embeddings by U(1 - s, 1 + s)")
    center_weight: float = knob(0.0, "weight of centre loss pulling features to learnt class centres")
    crt_epochs: int = knob(0, "classifier re-training epochs with a class-balanced sampler, body frozen")
    linear_fit: str = knob("sklearn", "how a linear head (--hidden logreg) is fitted: 'sklearn' (standardised "
                                      "L-BFGS logistic regression, C and class weighting chosen on validation; the "
                                      "loss knobs above do not apply) or 'torch' (this recipe's training loop)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing {self.label_smoothing} must be in [0, 1)").about(
                "label_smoothing", self.label_smoothing)
        if self.epochs < 1 or self.batch_size < 1:
            bad = "epochs" if self.epochs < 1 else "batch_size"
            raise ConfigError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be positive").about(
                bad, getattr(self, bad))
        if self.class_weights not in CLASS_WEIGHTINGS:
            raise ConfigError(f"class_weights {self.class_weights!r} is not one of {CLASS_WEIGHTINGS}").about(
                "class_weights", self.class_weights)
        if self.logit_adjust not in LOGIT_ADJUSTMENTS:
            raise ConfigError(f"logit_adjust {self.logit_adjust!r} is not one of {LOGIT_ADJUSTMENTS}").about(
                "logit_adjust", self.logit_adjust)
        if self.classifier not in CLASSIFIER_NAMES:
            raise ConfigError(f"classifier {self.classifier!r} is not one of {sorted(CLASSIFIER_NAMES)}").about(
                "classifier", self.classifier)
        if self.linear_fit not in LINEAR_FITS:
            raise ConfigError(f"linear_fit {self.linear_fit!r} is not one of {LINEAR_FITS}").about(
                "linear_fit", self.linear_fit)
        if not 0.0 <= self.arcface_margin < 90.0:
            raise ConfigError(f"arcface_margin {self.arcface_margin} must be in [0, 90) degrees").about(
                "arcface_margin", self.arcface_margin)
        if not self.arcface_scale > 0:
            raise ConfigError(f"arcface_scale {self.arcface_scale} must be positive").about(
                "arcface_scale", self.arcface_scale)
        if not 0.0 < self.effective_beta < 1.0:
            raise ConfigError(f"effective_beta {self.effective_beta} must be in (0, 1)").about(
                "effective_beta", self.effective_beta)
        negative = [k for k in ("mixup", "hardmine_epochs", "supcon_weight", "feature_noise",
                                "feature_scale", "center_weight", "crt_epochs") if getattr(self, k) < 0]
        if negative:
            raise ConfigError(f"{', '.join(negative)} must not be negative").about(
                negative[0], getattr(self, negative[0]))
