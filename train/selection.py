"""Model selection on the validation split: the tuned linear model, and the head grid of ``--select``.

Both choose by foreground macro F1 on the validation split (ties broken by the lower validation
NLL) and never look at the test split, so a benchmark can compare them with the test crops.

``tune_logreg`` is scikit-learn's StandardScaler + LogisticRegression (L-BFGS, multinomial) with C
and class weighting chosen from ``LOGREG_GRID``. It is both the baseline of every benchmark and
sweep table and how headserve fits its own linear head: ``linear_head_weights`` turns the chosen
model into the weights of ``MLPHead(hidden=())``, the graph that imported legacy heads also serve
through. Fitting the linear head through scikit-learn rather than with the recipe's gradient loop
is deliberate: L-BFGS on the convex problem reaches its optimum for every C, so headserve's linear
head equals the tuned baseline on any split instead of trailing it (the gradient loop with a fixed
weight decay scored 0.323 where the tuned model scored 0.514-0.526 on clip:tiny).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from headserve.errors import ConfigError
from headserve.train.evaluation import macro_f1_fg

# absent classes get this bias, so they are never predicted and their probability underflows to 0
ABSENT_CLASS_BIAS = -1e4


@dataclass(frozen=True)
class LogregGrid:
    """The values ``tune_logreg`` tries; every pair of (C, class_weight) is fitted once."""

    c: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # inverse L2 strength on standardised features
    class_weight: tuple[str | None, ...] = (None, "balanced")  # scikit-learn's class_weight values
    max_iter: int = 1000  # L-BFGS iterations; large C on separable data may stop there (warning silenced)

    def __post_init__(self) -> None:
        if not self.c or min(self.c) <= 0:
            raise ConfigError(f"logistic regression C grid {self.c} must be non-empty and positive").about("c", self.c)
        bad = [w for w in self.class_weight if w not in (None, "balanced")]
        if bad:
            raise ConfigError(f"class_weight values {bad} are not None or 'balanced'").about("class_weight", bad)


LOGREG_GRID = LogregGrid()


@dataclass(frozen=True)
class Candidate:
    """One fitted setting and how it scored on the validation split."""

    params: dict[str, Any]  # the setting (C and class_weight, or hidden / weight_decay / label_smoothing)
    val_macro_f1_fg: float  # selection criterion
    val_nll: float  # tie-break: lower wins

    def key(self) -> tuple[float, float]:
        return (self.val_macro_f1_fg, -self.val_nll)


def _best(candidates: Sequence[Candidate]) -> Candidate:
    """Highest validation macro F1, then lowest NLL; the first listed wins an exact tie (deterministic)."""
    return max(candidates, key=Candidate.key)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def foreground_classes(n_classes: int, background: Sequence[int]) -> list[int]:
    return [c for c in range(n_classes) if c not in set(background)]


@dataclass
class TunedLogreg:
    """StandardScaler + LogisticRegression chosen on validation, scoring every class of the head."""

    scaler: Any  # fitted sklearn StandardScaler
    model: Any  # fitted sklearn LogisticRegression
    n_classes: int  # classes of the head (some may be absent from the fit split)
    chosen: Candidate  # the selected (C, class_weight)
    candidates: list[Candidate] = field(default_factory=list)  # every setting tried, in grid order

    def logits(self, x: np.ndarray) -> np.ndarray:  # (N, D) -> (N, C)
        w, b = self.weights()
        return (x - self.scaler.mean_) / self.scaler.scale_ @ w.T + b

    def predict_proba(self, x: np.ndarray) -> np.ndarray:  # (N, D) -> (N, C), equals the model's predict_proba
        z = self.logits(x)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, D) weights and (C,) biases on standardised features, as a softmax classifier over every class.

        scikit-learn keeps one row for two classes (a sigmoid); softmax over (-z/2, z/2) gives the same
        probabilities. Classes absent from the fit split get zero weights and ``ABSENT_CLASS_BIAS``.
        """
        coef, intercept = np.asarray(self.model.coef_, np.float64), np.asarray(self.model.intercept_, np.float64)
        if coef.shape[0] == 1 and len(self.model.classes_) == 2:
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.r_[-intercept / 2, intercept / 2]
        w = np.zeros((self.n_classes, coef.shape[1]))
        b = np.full(self.n_classes, ABSENT_CLASS_BIAS)
        w[self.model.classes_], b[self.model.classes_] = coef, intercept
        return w, b

    def describe(self) -> dict[str, Any]:
        """The selection as meta.json and the tables record it."""
        return {"method": "sklearn StandardScaler + LogisticRegression (lbfgs), fit split only",
                "criterion": "validation macro F1 (foreground), then validation NLL",
                "grid": {"C": list(LOGREG_GRID.c), "class_weight": list(LOGREG_GRID.class_weight)},
                "chosen": self.chosen.params, "val_macro_f1_fg": self.chosen.val_macro_f1_fg,
                "lbfgs_iterations": int(np.max(self.model.n_iter_)),
                "candidates": [asdict(c) for c in self.candidates]}

    def label(self) -> str:
        """Short text of the choice for a table cell, e.g. ``C=10, balanced``."""
        p = self.chosen.params
        return f"C={p['C']:g}, {p['class_weight'] or 'unweighted'}"


def tune_logreg(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
                background: Sequence[int] = (), grid: LogregGrid = LOGREG_GRID) -> TunedLogreg:
    """Fit every (C, class_weight) of ``grid`` on the fit split; keep the best on the validation split.

    The chosen model stays the one fitted on the fit split (no refit on fit + validation), as
    headserve's own heads are: the validation split has chosen it and stays out of its weights.
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these fits are small, and OpenBLAS's threads spinning against each other made the
    # 12 fits 40x slower on a busy 2-core machine (5.5 s -> 0.14 s); one thread also fixes the result.
    with threadpool_limits(limits=1, user_api="blas"):
        return _tune_logreg(x_fit, y_fit, x_val, y_val, n_classes, background, grid)


def _tune_logreg(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
                 background: Sequence[int], grid: LogregGrid) -> TunedLogreg:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from headserve.head import floored_std

    fg = foreground_classes(n_classes, background)
    scaler = StandardScaler().fit(x_fit)
    scaler.scale_ = floored_std(scaler.scale_)  # the served head's scales (headserve.head.floored_std)
    xs_fit = scaler.transform(x_fit)  # validation goes through TunedLogreg, which scales it itself
    fitted: list[tuple[Candidate, Any]] = []
    for c, weight in itertools.product(grid.c, grid.class_weight):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, class_weight=weight, max_iter=grid.max_iter).fit(xs_fit, y_fit)
        tuned = TunedLogreg(scaler, model, n_classes, Candidate({}, 0.0, 0.0))
        probs = tuned.predict_proba(x_val)
        fitted.append((Candidate({"C": c, "class_weight": weight},
                                 macro_f1_fg(probs.argmax(1), y_val, fg, n_classes), _nll(probs, y_val)), model))
    candidates = [c for c, _ in fitted]
    chosen = _best(candidates)
    model = next(m for c, m in fitted if c is chosen)
    return TunedLogreg(scaler, model, n_classes, chosen, candidates)


def linear_head_weights(tuned: TunedLogreg, standardize: bool) -> dict[str, np.ndarray]:
    """The MLPHead(hidden=()) tensors that compute ``tuned.logits``.

    With ``standardize`` the scaler's mean and scale go into the head's ``emb_mean``/``emb_std``
    buffers; without it they are folded into the weights (W / s, b - W m / s), so the head is the
    plain linear layer that legacy heads are.
    """
    w, b = tuned.weights()
    mean, scale = tuned.scaler.mean_, tuned.scaler.scale_
    if standardize:
        out = {"emb_mean": mean, "emb_std": scale, "out.weight": w, "out.bias": b}
    else:
        folded = w / scale
        out = {"out.weight": folded, "out.bias": b - folded @ mean}
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@dataclass(frozen=True)
class SelectionGrid:
    """The heads ``headserve train --select`` tries (the sweep's ``--select`` row uses the same grid).

    Small on purpose: each point is a full fit with early stopping. Width () is the linear head,
    fitted once (its own C grid is LOGREG_GRID; weight decay and label smoothing do not apply to it).
    """

    hidden: tuple[tuple[int, ...], ...] = ((), (256,), (512, 256))  # MLP widths; () is the linear head
    weight_decay: tuple[float, ...] = (1e-4, 1e-2)  # AdamW decoupled weight decay
    label_smoothing: tuple[float, ...] = (0.0, 0.1)  # soft targets

    def __post_init__(self) -> None:
        if not (self.hidden and self.weight_decay and self.label_smoothing):
            raise ConfigError(f"selection grid {self} has an empty axis; each axis needs at least one value")

    def points(self, base: Any) -> list[tuple[tuple[int, ...], Any]]:
        """(hidden, TrainConfig) of every grid point, in a fixed order."""
        out = []
        for hidden in self.hidden:
            linear_once = not hidden and base.linear_fit == "sklearn" and base.classifier == "linear"
            pairs = [(base.weight_decay, base.label_smoothing)] if linear_once else \
                itertools.product(self.weight_decay, self.label_smoothing)
            out += [(tuple(hidden), replace(base, weight_decay=wd, label_smoothing=ls)) for wd, ls in pairs]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": [list(h) for h in self.hidden], "weight_decay": list(self.weight_decay),
                "label_smoothing": list(self.label_smoothing)}


SELECTION_GRID = SelectionGrid()


@dataclass
class Selection:
    """What ``select_head`` chose, with every point's validation score: recorded whole in meta.json."""

    hidden: tuple[int, ...]  # chosen MLP widths
    config: Any  # chosen TrainConfig
    chosen: Candidate
    candidates: list[Candidate]
    grid: SelectionGrid
    fit: Any = None  # the chosen point's FitResult (not recorded; a re-run from train_config reproduces it)

    def describe(self) -> dict[str, Any]:
        return {"criterion": "validation macro F1 (foreground), then validation NLL; early stopping on "
                             "validation loss inside each fit",
                "grid": self.grid.to_dict(), "chosen": self.chosen.params,
                "val_macro_f1_fg": self.chosen.val_macro_f1_fg, "train_config": asdict(self.config),
                "candidates": [asdict(c) for c in self.candidates]}


def select_head(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
                base: Any, background: Sequence[int] = (), grid: SelectionGrid = SELECTION_GRID) -> Selection:
    """Fit every point of ``grid`` on top of ``base`` (a TrainConfig); keep the best on validation."""
    import torch

    from headserve.train.trainer import fit_head, head_config_for

    fg = foreground_classes(n_classes, background)
    scored = []
    for hidden, cfg in grid.points(base):
        fit = fit_head(x_fit, y_fit, x_val, y_val, head_config_for(cfg, x_fit.shape[1], n_classes, hidden), cfg,
                       background=background)
        with torch.no_grad():
            probs = fit.head(torch.from_numpy(x_val))[1].numpy()
        if fit.linear_fit is not None:  # weight decay and label smoothing do not apply to it
            params = {"hidden": [], "linear_fit": fit.linear_fit["chosen"]}
        else:
            params = {"hidden": list(hidden), "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing}
        scored.append((Candidate(params, macro_f1_fg(probs.argmax(1), y_val, fg, n_classes), _nll(probs, y_val)),
                       hidden, cfg, fit))
    candidates = [c for c, *_ in scored]
    chosen = _best(candidates)
    _, hidden, cfg, fit = next(s for s in scored if s[0] is chosen)
    return Selection(hidden, cfg, chosen, candidates, grid, fit)
