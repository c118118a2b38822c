"""Fitting a head on cached embeddings: the recipe's losses, samplers and calibration.

Plain PyTorch with AdamW and early stopping on validation loss. Every knob of the recipe is a field
of ``TrainConfig``; named profiles (``headserve.train.profiles``) are presets of it. Temperature scaling
(Guo et al., 2017) fits one scalar T by minimising the NLL of softmax(z / T) on the validation split;
it changes no argmax, only how far probabilities can be trusted. A fitted T is kept only where it
lowers the validation NLL and lies inside its bounds; otherwise the head keeps T = 1 and the fit
records why (``Calibration``). A linear head (``hidden=()``, linear classifier) is fitted by
scikit-learn with its regularisation chosen on validation (``headserve.train.selection``). SupCon
comes from pytorch-metric-learning; centre loss is hand-written (three lines; the library has none). The ArcFace
margin lives in the head's cosine classifier rather than in the library's ArcFaceLoss, because that
loss owns its class weights and its cross-entropy, so it could neither be served as the head nor take
soft targets (label smoothing, mixup) and class weights; a unit test checks the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headserve.errors import ConfigError
from headserve.head import HeadConfig, MLPHead, ServingHead, floored_std
from headserve.train.config import CLASS_WEIGHTINGS, TrainConfig  # TrainConfig: callers import it from here too

TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted T at either end means the optimum lies outside: keep T = 1
NLL_TOLERANCE = 1e-6  # a fitted T must lower validation NLL by more than this to be kept


@dataclass(frozen=True)
class Calibration:
    """The temperature a head serves, and why: the fitted value is kept only where it helps."""

    temperature: float  # what the head serves
    fitted: float | None  # what the optimiser found (None: calibration off)
    val_nll_before: float  # validation NLL at T = 1
    val_nll_fitted: float  # validation NLL at the fitted T
    reason: str  # one sentence for the report

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted": self.fitted, "val_nll_before": self.val_nll_before,
                "val_nll_fitted": self.val_nll_fitted, "reason": self.reason}


@dataclass
class FitResult:
    head: ServingHead
    epochs_run: int
    best_val_loss: float
    temperature: float
    class_weights: list[float]  # loss weight per class as used (sum = class count)
    log_priors: list[float]  # log of training class frequencies (smoothed)
    calibration: Calibration | None = None  # the temperature decision
    linear_fit: dict[str, Any] | None = None  # the scikit-learn selection, for linear heads fitted by it

    def record(self) -> dict[str, Any]:
        """What meta.json's ``extra`` keeps of this fit beside the recipe."""
        out: dict[str, Any] = {}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        if self.linear_fit is not None:
            out["linear_fit"] = self.linear_fit
        return out


def class_weights(counts: np.ndarray, kind: str, beta: float = 0.9999) -> np.ndarray:
    """Per-class loss weights normalised to sum to the class count (absent classes get weight 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    if kind == "none":
        w[present] = 1.0
    elif kind == "balanced":
        w[present] = 1.0 / counts[present]
    elif kind == "effective":  # Cui et al., 2019: weight 1 / effective number of samples
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    else:
        raise ConfigError(f"class weighting {kind!r} is not one of {CLASS_WEIGHTINGS}")
    return w * len(counts) / w.sum()


def log_priors(counts: np.ndarray) -> np.ndarray:
    """log of class frequencies, with one pseudo-count so absent classes stay finite."""
    counts = np.asarray(counts, dtype=np.float64) + 1.0
    return np.log(counts / counts.sum())


def head_config_for(config: TrainConfig, in_dim: int, num_classes: int, hidden: tuple[int, ...] = ()) -> HeadConfig:
    """The head shape a recipe implies: its blocks, dropout, standardisation and classifier."""
    return HeadConfig(in_dim=in_dim, num_classes=num_classes, hidden=tuple(hidden),
                      activation="gelu" if config.gelu_ln else "relu", layernorm=bool(hidden) and config.gelu_ln,
                      dropout=config.dropout if hidden else 0.0, standardize=config.standardize,
                      classifier=config.classifier, scale=config.arcface_scale)


class _AuxLosses(nn.Module):
    """The optional losses on head features: SupCon, centre loss."""

    def __init__(self, feat_dim: int, num_classes: int, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.supcon = None
        if config.supcon_weight > 0:
            from pytorch_metric_learning.losses import SupConLoss

            self.supcon = SupConLoss(temperature=config.supcon_temperature)
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * 0.01) if config.center_weight > 0 else None

    @property
    def active(self) -> bool:
        return self.supcon is not None or self.centers is not None

    def forward(self, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, H), (B,) -> ()
        c = self.config
        loss = feats.new_zeros(())
        if self.supcon is not None:
            loss = loss + c.supcon_weight * self.supcon(feats, y)
        if self.centers is not None:
            loss = loss + c.center_weight * (feats - self.centers[y]).pow(2).sum(1).mean()
        return loss


def _augment(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:  # (B, D) -> (B, D)
    # Draws come from the CPU generator and move to x's device, so a seed gives the same run on any device.
    if config.feature_scale > 0:
        scale = 1 + (torch.rand(x.shape[1], generator=gen) * 2 - 1) * config.feature_scale
        x = x * scale.to(x.device)
    if config.feature_noise > 0:
        x = x + torch.randn(x.shape, generator=gen).to(x.device) * config.feature_noise
    return x


def _soft_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against soft targets (B, C), label-smoothed, class-weighted by the target mass."""
    n = logits.shape[1]
    target = target * (1 - smoothing) + smoothing / n
    per = -(target * F.log_softmax(logits, dim=1)).sum(1)  # (B,)
    w = (target * weight).sum(1)  # (B,)
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def fits_by_sklearn(head_config: HeadConfig, config: TrainConfig) -> bool:
    """Whether this head is the linear model that scikit-learn fits (see headserve.train.selection)."""
    return not head_config.hidden and head_config.classifier == "linear" and config.linear_fit == "sklearn"


# Loss knobs that the scikit-learn linear fit does not use, with their off values: a profile that sets
# one gets it listed in meta.json's linear_fit record. (Optimiser knobs such as lr, weight_decay and epochs
# do not apply either; C and class weighting are chosen on validation instead.)
SKLEARN_IGNORES = {"label_smoothing": 0.0, "mixup": 0.0, "class_weights": "none", "hardmine_epochs": 0,
                   "supcon_weight": 0.0, "feature_noise": 0.0, "feature_scale": 0.0, "center_weight": 0.0,
                   "crt_epochs": 0}


def _fit_linear_sklearn(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                        head_config: HeadConfig, config: TrainConfig,
                        background: Sequence[int]) -> tuple[MLPHead, dict[str, Any], float]:
    """The linear head as scikit-learn's tuned logistic regression; returns (head, record, val NLL)."""
    from headserve.train.selection import linear_head_weights, tune_logreg

    tuned = tune_logreg(x_train, y_train, x_val, y_val, head_config.num_classes, background)
    head = MLPHead(head_config)
    state = head.state_dict()
    for k, v in linear_head_weights(tuned, head_config.standardize).items():
        state[k] = torch.from_numpy(v)
    head.load_state_dict(state)
    unused = sorted(k for k, off in SKLEARN_IGNORES.items() if getattr(config, k) != off)
    if config.logit_adjust in ("train", "both"):
        unused.append(f"logit_adjust={config.logit_adjust} (training part)")
    record = {**tuned.describe(), "recipe_knobs_not_applied": unused}
    return head.eval(), record, tuned.chosen.val_nll


@dataclass(frozen=True)
class _Loop:
    """What every phase of the gradient loop reads: the data on the loop's device and the optimisation state.

    Phases that change the optimiser or the auxiliary losses (cRT) pass a ``dataclasses.replace`` copy,
    so no phase sees another's rebinding.
    """

    config: TrainConfig  # the recipe's knobs
    head: MLPHead  # the head being trained, on the loop's device
    optim: torch.optim.Optimizer  # over the parameters this phase trains
    aux: _AuxLosses  # SupCon / centre loss on head features (inactive in cRT)
    gen: torch.Generator  # CPU generator: batch order, mixup pairing, hard-example and cRT draws
    mixup: torch.distributions.Beta | None  # Beta(a, a) mixing weights; None: no mixup
    margin: float  # ArcFace angular margin in radians (used by the cosine classifier only)
    xt: torch.Tensor  # (N, D) training embeddings
    yt: torch.Tensor  # (N,) training labels
    xv: torch.Tensor  # (M, D) validation embeddings
    yv: torch.Tensor  # (M,) validation labels
    weight: torch.Tensor  # (C,) loss weight per class
    train_shift: torch.Tensor  # (C,) added to logits in the loss (logit adjustment in training), else zeros
    counts: np.ndarray  # (C,) training examples per class, for cRT's class-balanced sampler


@dataclass(frozen=True)
class _Best:
    """Where a phase left the head: the weights it keeps, their validation loss, and epochs run so far."""

    state: dict[str, torch.Tensor]  # clones of head.state_dict()
    val_loss: float  # validation cross-entropy (with the training logit shift) of ``state``
    epoch: int  # epochs run, counting every phase so far


def _feature_width(config: HeadConfig) -> int:
    """Width H of the features the classifier and the auxiliary losses see."""
    return config.hidden[-1] if config.hidden else config.in_dim


def _start(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
           head_config: HeadConfig, config: TrainConfig, weight: torch.Tensor, train_shift: torch.Tensor,
           counts: np.ndarray, device: torch.device) -> _Loop:
    """A fresh head and its optimiser on ``device``; initialisation draws from the seeded global generator."""
    xt, yt = torch.from_numpy(x_train).float(), torch.from_numpy(y_train).long()  # (N, D), (N,)
    xv, yv = torch.from_numpy(x_val).float(), torch.from_numpy(y_val).long()  # (M, D), (M,)
    head = MLPHead(head_config)
    if head_config.standardize:
        head.emb_mean.copy_(xt.mean(0))  # (D,)
        head.emb_std.copy_(torch.from_numpy(floored_std(xt.std(0).numpy())))  # (D,)
    head = head.to(device)
    aux = _AuxLosses(_feature_width(head_config), head_config.num_classes, config).to(device)
    optim = torch.optim.AdamW([*head.parameters(), *aux.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    return _Loop(config=config, head=head, optim=optim, aux=aux, gen=torch.Generator().manual_seed(config.seed),
                 mixup=torch.distributions.Beta(config.mixup, config.mixup) if config.mixup > 0 else None,
                 margin=math.radians(config.arcface_margin), xt=xt.to(device), yt=yt.to(device), xv=xv.to(device),
                 yv=yv.to(device), weight=weight.to(device), train_shift=train_shift.to(device), counts=counts)


def _step(loop: _Loop, idx: torch.Tensor, balanced_weight: bool = True) -> None:
    """One optimiser step on the training examples ``idx`` (B,)."""
    c, head = loop.config, loop.head
    x, y = _augment(loop.xt[idx], c, loop.gen), loop.yt[idx]  # (B, D), (B,)
    target = F.one_hot(y, head.config.num_classes).float()  # (B, C)
    loss = x.new_zeros(())
    if loop.aux.active:
        loss = loss + loop.aux(head.features(x), y)
    if loop.mixup is not None:
        lam = float(loop.mixup.sample())
        perm = torch.randperm(len(x), generator=loop.gen)  # (B,)
        x, target = lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
    w = loop.weight if balanced_weight else torch.ones_like(loop.weight)  # (C,)
    logits = head.train_logits(x, target, loop.margin) + loop.train_shift  # (B, C)
    loss = loss + _soft_ce(logits, target, w, c.label_smoothing)
    loop.optim.zero_grad()
    loss.backward()
    loop.optim.step()


def _validate(loop: _Loop) -> float:
    """Validation cross-entropy of the head as it is, with the loss's logit shift; leaves it in eval mode."""
    loop.head.eval()
    with torch.no_grad():
        return F.cross_entropy(loop.head(loop.xv) + loop.train_shift, loop.yv).item()  # (M, C) -> ()


def _snapshot(head: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in head.state_dict().items()}


def _fit(loop: _Loop) -> _Best:
    """Phase 1: epochs over shuffled batches, early-stopped on validation loss; returns the best state."""
    c = loop.config
    best, best_state, stale, epoch = math.inf, None, 0, 0
    for epoch in range(1, c.epochs + 1):
        loop.head.train()
        for idx in torch.randperm(len(loop.xt), generator=loop.gen).split(c.batch_size):  # (B,) each
            _step(loop, idx)
        val = _validate(loop)
        if val < best - 1e-5:
            best, stale = val, 0
            best_state = _snapshot(loop.head)
        else:
            stale += 1
            if stale >= c.patience:
                break
    assert best_state is not None  # at least one epoch ran
    return _Best(best_state, best, epoch)


def _mine(loop: _Loop, start: _Best) -> _Best:
    """Phase 2 (hard mining): from ``start``, epochs that draw examples in proportion to their current loss.

    The mined state is kept as it ends: its point is to move the boundary towards hard examples.
    """
    c, head = loop.config, loop.head
    head.load_state_dict(start.state)
    epoch = start.epoch
    for _ in range(c.hardmine_epochs):
        epoch += 1
        with torch.no_grad():
            head.eval()
            per = F.cross_entropy(head(loop.xt) + loop.train_shift, loop.yt, reduction="none")  # (N,)
        head.train()
        draws = torch.multinomial((per + 1e-6).cpu(), len(loop.xt), replacement=True, generator=loop.gen)  # (N,)
        for idx in draws.split(c.batch_size):
            _step(loop, idx)
    return _Best(_snapshot(head), _validate(loop), epoch)


def _rebalance(loop: _Loop) -> None:
    """Phase 3 (cRT): re-train only the classifier with a class-balanced sampler, the body frozen.

    It gets its own optimiser and no auxiliary losses; the loss is unweighted because the sampler
    already balances the classes.
    """
    c, head = loop.config, loop.head
    for p in head.body.parameters():
        p.requires_grad_(False)
    no_aux = _AuxLosses(_feature_width(head.config), head.config.num_classes, TrainConfig()).to(loop.xt.device)
    crt = replace(loop, optim=torch.optim.AdamW(head.out.parameters(), lr=c.lr, weight_decay=c.weight_decay),
                  aux=no_aux)
    sample_w = (1.0 / torch.from_numpy(loop.counts).float().clamp_min(1))[loop.yt.cpu()]  # (N,)
    head.train()
    for _ in range(c.crt_epochs):
        order = torch.multinomial(sample_w, len(loop.xt), replacement=True, generator=loop.gen)  # (N,)
        for idx in order.split(c.batch_size):
            _step(crt, idx, balanced_weight=False)
    for p in head.body.parameters():
        p.requires_grad_(True)


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             head_config: HeadConfig, config: TrainConfig = TrainConfig(),
             background: Sequence[int] = (), device: str | torch.device = "cpu") -> FitResult:
    """Train an MLP/logreg head by the recipe in ``config``; returns it wrapped for serving.

    The gradient loop runs in phases, each a function of ``_Loop``: fit (early-stopped epochs),
    mine (hard examples), rebalance (cRT), then calibrate on the CPU. ``background`` names the
    background classes, which the linear head's selection leaves out of its foreground macro F1.
    """
    torch.manual_seed(config.seed)
    n_cls = head_config.num_classes
    counts = np.bincount(y_train, minlength=n_cls)  # (C,)
    weight = torch.from_numpy(class_weights(counts, config.class_weights, config.effective_beta)).float()  # (C,)
    priors = torch.from_numpy(log_priors(counts)).float()  # (C,)
    train_shift = config.logit_tau * priors if config.logit_adjust in ("train", "both") else torch.zeros(n_cls)
    infer_priors = priors if config.logit_adjust in ("infer", "both") else None
    xv, yv = torch.from_numpy(x_val).float(), torch.from_numpy(y_val).long()  # (M, D), (M,) on the CPU

    if fits_by_sklearn(head_config, config):
        head, linear, val_nll = _fit_linear_sklearn(x_train, y_train, x_val, y_val, head_config, config, background)
        serving, calibration = _calibrate(head, xv, yv, infer_priors, config)
        # epochs_run 0: L-BFGS has iterations, not epochs; linear["lbfgs_iterations"] counts them
        return FitResult(serving, 0, val_nll, calibration.temperature,
                         weight.tolist(), priors.tolist(), calibration, linear)

    # The loop runs on ``device``; generators, sampling weights and the serving wrapper stay on the CPU.
    loop = _start(x_train, y_train, x_val, y_val, head_config, config, weight, train_shift, counts,
                  torch.device(device))
    best = _fit(loop)
    if config.hardmine_epochs > 0:
        best = _mine(loop, best)
    loop.head.load_state_dict(best.state)
    if config.crt_epochs > 0:
        _rebalance(loop)
    serving, calibration = _calibrate(loop.head.eval().cpu(), xv, yv, infer_priors, config)
    return FitResult(serving, best.epoch, best.val_loss, calibration.temperature, weight.tolist(), priors.tolist(),
                     calibration)


def _calibrate(head: MLPHead, xv: torch.Tensor, yv: torch.Tensor, priors: torch.Tensor | None,
               config: TrainConfig) -> tuple[ServingHead, Calibration]:
    """Last phase: wrap a trained head for serving, with logit adjustment at inference, then the temperature
    decision on the validation split ``xv`` (M, D), ``yv`` (M,)."""
    serving = ServingHead(head.eval())
    if priors is not None:
        serving.logit_bias.copy_(-config.logit_tau * priors)
    with torch.no_grad():
        logits = head(xv) + serving.logit_bias  # (M, C)
    calibration = calibrate_temperature(logits, yv) if config.calibrate else \
        Calibration(1.0, None, _nll(logits, yv, 1.0), _nll(logits, yv, 1.0), "calibration is off in this recipe")
    serving.temperature.fill_(calibration.temperature)
    return serving.eval(), calibration


def _nll(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    return float(F.cross_entropy(logits.detach().double() / t, labels).item())


def calibrate_temperature(logits: torch.Tensor, labels: torch.Tensor,
                          fit: Callable[[torch.Tensor, torch.Tensor], float] | None = None) -> Calibration:
    """Fit T on validation NLL and keep it only where it lowers that NLL inside ``TEMPERATURE_BOUNDS``.

    A T at a bound means the optimum lies beyond it (e.g. validation logits that separate every class,
    where NLL keeps falling as T -> 0): serving it would claim a confidence the data cannot support, so
    the head keeps T = 1. ``fit`` defaults to ``fit_temperature``.
    """
    fitted = (fit or fit_temperature)(logits, labels)
    before, after = _nll(logits, labels, 1.0), _nll(logits, labels, fitted)
    low, high = TEMPERATURE_BOUNDS
    at_bound = math.isclose(fitted, low, rel_tol=1e-6) or math.isclose(fitted, high, rel_tol=1e-6)  # float32 clamp
    if not math.isfinite(fitted) or at_bound or fitted < low or fitted > high:
        reason = f"fitted T = {fitted:.3g} hit the bound [{low}, {high}]; kept T = 1"
        return Calibration(1.0, fitted, before, after, reason)
    if not after < before - NLL_TOLERANCE:
        reason = f"fitted T = {fitted:.3g} did not lower validation NLL ({before:.4f} -> {after:.4f}); kept T = 1"
        return Calibration(1.0, fitted, before, after, reason)
    return Calibration(fitted, fitted, before, after,
                       f"T = {fitted:.3g} lowered validation NLL {before:.4f} -> {after:.4f}")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 minimising NLL of softmax(logits / T); optimised in log space so T stays positive."""
    log_t = torch.zeros(1, requires_grad=True)
    optim = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits = logits.detach().float()

    def closure() -> torch.Tensor:
        optim.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optim.step(closure)
    return float(log_t.exp().clamp(*TEMPERATURE_BOUNDS).item())
