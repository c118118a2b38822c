"""Selection on validation, the scikit-learn linear head, calibration that never hurts, and error bars."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from headserve.head import build_serving_head
from headserve.train.evaluation import comparison, macro_f1_fg, paired_f1_difference
from headserve.train.profiles import profile_config
from headserve.train.selection import SelectionGrid, linear_head_weights, select_head, tune_logreg
from headserve.train.trainer import TEMPERATURE_BOUNDS, TrainConfig, calibrate_temperature, fit_head, head_config_for


def sparse_signal(n: int, dim: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by 2 of ``dim`` features; the rest is noise a weak penalty memorises."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, dim))
    x[:, :2] += (2 * y[:, None] - 1) * 0.8
    return x.astype(np.float32), y.astype(np.int64)


def test_baseline_c_is_chosen_on_the_validation_split_and_changes_with_it():
    x_fit, y_fit = sparse_signal(40)
    x_new, y_new = sparse_signal(400, seed=1)
    on_new = tune_logreg(x_fit, y_fit, x_new, y_new, 2)
    on_fit = tune_logreg(x_fit, y_fit, x_fit, y_fit, 2)  # "validating" on the fit split rewards memorising
    for tuned in (on_new, on_fit):
        assert tuned.chosen == max(tuned.candidates, key=lambda c: (c.val_macro_f1_fg, -c.val_nll))
        assert len(tuned.candidates) == 12
    assert on_new.chosen.params["C"] < on_fit.chosen.params["C"] == 1000.0


@pytest.mark.parametrize("standardize", [True, False])
def test_linear_head_serves_the_tuned_baselines_probabilities_through_the_logreg_graph(
        standardize: bool, long_tailed_embeddings):
    x, y = long_tailed_embeddings
    cfg = replace(profile_config("full"), standardize=standardize)
    hc = head_config_for(cfg, 16, 4, ())
    fit = fit_head(x[::2], y[::2], x[1::2], y[1::2], hc, cfg, background=(3,))
    tuned = tune_logreg(x[::2], y[::2], x[1::2], y[1::2], 4, background=(3,))
    assert fit.linear_fit["chosen"] == tuned.chosen.params
    # the same graph as an imported legacy head: MLPHead(hidden=()) rebuilt from config and weights
    served = build_serving_head(hc, {k: v.clone() for k, v in fit.head.state_dict().items()})
    with torch.no_grad():
        logits = served(torch.from_numpy(x))[0].numpy()
    expected = tuned.model.decision_function(tuned.scaler.transform(x))
    assert np.max(np.abs(logits - expected)) < 1e-4
    assert hc.head_type == "logreg"


def test_linear_head_weights_fold_standardisation_when_the_head_does_not_standardise(long_tailed_embeddings):
    x, y = long_tailed_embeddings
    tuned = tune_logreg(x, y, x, y, 4)
    folded = linear_head_weights(tuned, standardize=False)
    assert set(folded) == {"out.weight", "out.bias"}
    assert np.allclose(x @ folded["out.weight"].T + folded["out.bias"], tuned.logits(x), atol=1e-4)


def test_a_class_absent_from_the_fit_split_is_never_predicted(long_tailed_embeddings):
    x, y = long_tailed_embeddings
    keep = y != 2
    tuned = tune_logreg(x[keep], y[keep], x[keep], y[keep], 4)
    probs = tuned.predict_proba(x)
    assert probs.shape == (len(x), 4) and probs[:, 2].max() < 1e-6


def test_temperature_fit_that_would_raise_validation_nll_leaves_t_at_one():
    torch.manual_seed(0)
    logits = torch.randn(500, 4) * 2
    labels = torch.distributions.Categorical(logits=logits).sample()  # calibrated at T = 1 by construction
    # L-BFGS on the validation NLL itself cannot return a T that raises it, so this fault is injected:
    # a fitter that returns T = 3 stands in for any fit that went wrong.
    cal = calibrate_temperature(logits, labels, fit=lambda z, y: 3.0)
    assert cal.val_nll_fitted > cal.val_nll_before
    assert cal.temperature == 1.0 and cal.fitted == 3.0 and "did not lower validation NLL" in cal.reason


def test_temperature_that_hits_its_bound_leaves_t_at_one():
    labels = torch.arange(200) % 4
    logits = torch.nn.functional.one_hot(labels, 4).float() * 0.5  # separates every crop: NLL falls as T -> 0
    cal = calibrate_temperature(logits, labels)
    assert cal.fitted == pytest.approx(TEMPERATURE_BOUNDS[0])
    assert cal.temperature == 1.0 and "hit the bound" in cal.reason


def test_temperature_that_lowers_validation_nll_is_kept_with_its_reason():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (400,))
    logits = torch.randn(400, 4) * 8
    logits[torch.arange(200), labels[:200]] += 10
    cal = calibrate_temperature(logits, labels)
    assert cal.temperature > 1 and cal.val_nll_fitted < cal.val_nll_before and "lowered" in cal.reason


@pytest.mark.parametrize("hidden", [(), (32,)])
def test_same_seed_and_thread_count_give_byte_identical_head_weights(
        hidden: tuple[int, ...], long_tailed_embeddings):
    x, y = long_tailed_embeddings
    cfg = profile_config("full", epochs=20, seed=7)
    threads = torch.get_num_threads()
    weights = []
    for _ in range(2):
        torch.set_num_threads(threads)
        fit = fit_head(x[::2], y[::2], x[1::2], y[1::2], head_config_for(cfg, 16, 4, hidden), cfg)
        weights.append({k: v.numpy().tobytes() for k, v in fit.head.state_dict().items()})
    assert weights[0] == weights[1]


def test_macro_f1_fg_equals_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    pred[:150] = y[:150]
    fg = [0, 1, 2, 4]
    assert macro_f1_fg(pred, y, fg, 5) == pytest.approx(f1_score(y, pred, labels=fg, average="macro", zero_division=0))


def test_paired_bootstrap_calls_identical_heads_a_tie_and_a_clearly_better_head_better():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    noisy = np.where(rng.random(300) < 0.5, y, rng.integers(0, 3, 300))
    same = paired_f1_difference(y, [noisy], [noisy], [0, 1, 2], 3)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and comparison(same) == "tie"
    better = paired_f1_difference(y, [y, y, y], [noisy], [0, 1, 2], 3)
    assert better.low > 0 and comparison(better) == "better"
    assert paired_f1_difference(y, [y], [noisy], [0, 1, 2], 3) == better  # seeded: a re-run gives the same interval


def test_select_keeps_the_best_validation_point_and_its_config_reproduces_the_head(long_tailed_embeddings):
    x, y = long_tailed_embeddings
    grid = SelectionGrid(hidden=((), (16,)), weight_decay=(1e-4,), label_smoothing=(0.0, 0.1))
    base = profile_config("full", epochs=15, seed=3)
    sel = select_head(x[::2], y[::2], x[1::2], y[1::2], 4, base, background=(3,), grid=grid)
    assert len(sel.candidates) == 3  # the linear head once, the MLP at each label smoothing
    assert sel.chosen.val_macro_f1_fg == max(c.val_macro_f1_fg for c in sel.candidates)
    record = sel.describe()
    assert record["grid"] == {"hidden": [[], [16]], "weight_decay": [1e-4], "label_smoothing": [0.0, 0.1]}
    again = TrainConfig(**record["train_config"])  # everything a re-run needs is in the record
    hidden = tuple(record["chosen"]["hidden"])
    refit = fit_head(x[::2], y[::2], x[1::2], y[1::2], head_config_for(again, 16, 4, hidden), again, background=(3,))
    assert all(torch.equal(a, b) for a, b in zip(refit.head.state_dict().values(), sel.fit.head.state_dict().values()))
