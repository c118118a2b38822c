"""The training recipe as named profiles: presets of ``TrainConfig`` that the sweep compares.

Profile names are the ones of the earlier sweep report. ``base`` has label smoothing 0.1, embedding
mixup 0.1 and balanced class weights; each first-generation profile adds one knob to it; ``full``
adds all of them (effective-number weights, standardisation, hard mining, GELU+LayerNorm,
temperature scaling). Second-generation profiles add one knob to ``full``.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Mapping

from headserve.errors import ConfigError
from headserve.train.config import TrainConfig
from headserve.train.errors import RecipeError, UnknownProfileError

BASE = TrainConfig(label_smoothing=0.1, mixup=0.1, class_weights="balanced", gelu_ln=False, standardize=False,
                   hardmine_epochs=0, calibrate=False)
FULL = replace(BASE, class_weights="effective", standardize=True, hardmine_epochs=5, gelu_ln=True, calibrate=True)

# profile name -> the knobs it changes from its parent ("base" or "full")
PROFILES: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("base", {}),
    "center_std": ("base", {"standardize": True}),
    "effective": ("base", {"class_weights": "effective"}),
    "hardmine": ("base", {"hardmine_epochs": 5}),
    "gelu_ln": ("base", {"gelu_ln": True}),
    "calib": ("base", {"calibrate": True}),
    "full": ("full", {}),
    "logit_train": ("full", {"logit_adjust": "train"}),
    "logit_infer": ("full", {"logit_adjust": "infer"}),
    "logit_both": ("full", {"logit_adjust": "both"}),
    # The served cosine classifier (margin m, scale s). Without hard mining: the margin already puts the
    # loss on hard examples, and mining on top of it (losses near 0 or near s) resampled a handful of
    # crops; on the raw-pixel digits benchmark it cost macro F1 (0.83-0.88 with mining, 0.94-0.98 without).
    "arcface": ("full", {"classifier": "arcface", "hardmine_epochs": 0}),
    "supcon": ("full", {"supcon_weight": 0.1}),
    "feataug": ("full", {"feature_noise": 0.01, "feature_scale": 0.1}),
    "center": ("full", {"center_weight": 0.01}),
    "crt": ("full", {"crt_epochs": 10}),
}
_PARENTS = {"base": BASE, "full": FULL}


def profile_config(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of profile ``name`` with ``overrides`` (e.g. epochs) applied on top."""
    if name not in PROFILES:
        raise UnknownProfileError(f"profile {name!r} is not one of {', '.join(PROFILES)}; pass one of those names")
    parent, knobs = PROFILES[name]
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UnknownProfileError(f"unknown training knob(s) {bad}; known: {sorted(known)}")
    try:
        return replace(_PARENTS[parent], **{**knobs, **overrides})
    except ConfigError as exc:  # TrainConfig's own check names the knob and the allowed range
        raise RecipeError(f"profile {name!r} with {overrides}: {exc}") from exc


def describe(config: TrainConfig) -> Mapping[str, Any]:
    """The knobs that differ from TrainConfig's defaults, for reports and meta.json."""
    default = TrainConfig()
    return {f.name: getattr(config, f.name) for f in fields(TrainConfig) if getattr(config, f.name) != getattr(default, f.name)}
