"""The recipe's knobs and profiles, on small structured embeddings (seconds, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headserve.errors import ConfigError
from headserve.head import HeadConfig
from headserve.train.errors import UnknownProfileError
from headserve.train.profiles import PROFILES, profile_config
from headserve.train.trainer import TrainConfig, class_weights, fit_head, fits_by_sklearn, head_config_for, log_priors

REQUIRED_PROFILES = ("base", "center_std", "effective", "hardmine", "gelu_ln", "calib", "full", "logit_train",
                     "logit_infer", "logit_both", "arcface", "supcon")


def test_every_profile_of_the_earlier_sweep_is_registered():
    assert set(REQUIRED_PROFILES) <= set(PROFILES)


def test_full_profile_turns_on_every_first_generation_knob():
    full = profile_config("full")
    assert (full.label_smoothing, full.mixup, full.class_weights, full.effective_beta) == (0.1, 0.1, "effective", 0.9999)
    assert full.standardize and full.gelu_ln and full.calibrate and full.hardmine_epochs > 0


def test_unknown_profile_is_an_error_that_lists_the_known_ones():
    with pytest.raises(UnknownProfileError, match="'fulll' is not one of base, center_std"):
        profile_config("fulll")


def test_unknown_training_knob_is_refused():
    with pytest.raises(UnknownProfileError, match="unknown training knob"):
        profile_config("full", learning_rate=1.0)


def test_bad_knob_value_names_the_value():
    with pytest.raises(ConfigError, match="logit_adjust 'sometimes'"):
        TrainConfig(logit_adjust="sometimes")


def test_effective_number_weights_sum_to_the_class_count_and_favour_rare_classes():
    w = class_weights(np.array([1000, 100, 10]), "effective", 0.9999)
    assert w.sum() == pytest.approx(3.0)
    assert w[0] < w[1] < w[2]


def test_class_with_no_examples_gets_no_weight():
    w = class_weights(np.array([10, 0, 5]), "balanced")
    assert w[1] == 0 and w.sum() == pytest.approx(3.0)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_trains_a_head_that_beats_chance(profile: str, long_tailed_embeddings):
    x, y = long_tailed_embeddings
    cfg = profile_config(profile, epochs=40, patience=40, lr=5e-3)
    hc = head_config_for(cfg, 16, 4, (32,))
    fit = fit_head(x[::2], y[::2], x[1::2], y[1::2], hc, cfg)
    with torch.no_grad():
        _, probs, ood = fit.head(torch.from_numpy(x[1::2]))
    from sklearn.metrics import balanced_accuracy_score

    assert balanced_accuracy_score(y[1::2], probs.argmax(1).numpy()) > 0.5  # chance is 0.25
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5) and ood.shape == (len(probs), 1)


def test_logit_adjustment_at_inference_stores_minus_tau_log_priors_as_the_logit_bias(long_tailed_embeddings):
    x, y = long_tailed_embeddings
    fit = fit_head(x, y, x, y, HeadConfig(16, 4), profile_config("logit_infer", epochs=3, logit_tau=0.5))
    expected = -0.5 * log_priors(np.bincount(y, minlength=4))
    assert np.allclose(fit.head.logit_bias.numpy(), expected, atol=1e-6)


def test_standardisation_stats_live_in_the_head_buffers(long_tailed_embeddings):
    x, y = long_tailed_embeddings
    fit = fit_head(x, y, x, y, HeadConfig(16, 4, standardize=True), profile_config("center_std", epochs=2))
    assert np.allclose(fit.head.head.emb_mean.numpy(), x.mean(0), atol=1e-6)


@pytest.mark.parametrize("hidden", [(32,), ()], ids=["mlp", "linear-sklearn"])
def test_a_dimension_constant_in_training_cannot_swing_the_served_answer(hidden, long_tailed_embeddings):
    """Dimension 3 barely moves on the training crops; at serving it moves by 0.02, as an embedding's dims do."""
    from headserve.head import STD_FLOOR_SHARE

    x, y = long_tailed_embeddings
    x = x.copy()
    rng = np.random.default_rng(1)
    x[:, 3] = 0.1 + rng.standard_normal(len(x)).astype(np.float32) * 1e-7
    cfg = profile_config("center_std", epochs=30, patience=30, lr=5e-3)
    hc = head_config_for(cfg, 16, 4, hidden)
    assert fits_by_sklearn(hc, cfg) == (not hidden)  # the tuned linear head standardises through its scaler
    fit = fit_head(x[::2], y[::2], x[1::2], y[1::2], hc, cfg)
    std = fit.head.head.emb_std.numpy()
    assert std[3] >= STD_FLOOR_SHARE * np.median(std) * 0.999
    moved = x[1::2].copy()
    moved[:, 3] += 0.02
    with torch.no_grad():
        before = fit.head(torch.from_numpy(x[1::2]))[1].numpy()
        after = fit.head(torch.from_numpy(moved))[1].numpy()
    assert np.abs(after - before).max() < 0.5, "a 0.02 move in a dimension constant in training flipped answers"


def test_temperature_scaling_lowers_validation_nll_of_an_overconfident_head():
    from headserve.train.trainer import fit_temperature

    torch.manual_seed(0)
    labels = torch.randint(0, 4, (400,))
    logits = torch.randn(400, 4) * 8
    logits[torch.arange(200), labels[:200]] += 10  # half right with huge margins, half noise
    t = fit_temperature(logits, labels)
    nll = torch.nn.functional.cross_entropy
    assert t > 1 and nll(logits / t, labels) < nll(logits, labels)
