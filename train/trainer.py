"""Fitting a head on cached embeddings, then its temperature on held-out data.

The trainer is plain PyTorch: AdamW, label-smoothed cross-entropy, early stopping on validation
loss. Temperature scaling (Guo et al., 2017) fits one scalar T by minimising NLL of softmax(z / T)
on the validation split; it changes no argmax, only how far probabilities can be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from headserve.head import HeadConfig, MLPHead, ServingHead


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation knobs of one head fit."""

    label_smoothing: float = 0.1  # soft targets; 0.1 was the best setting of the earlier sweeps
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    epochs: int = 150  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # embeddings per step
    patience: int = 15  # epochs without validation improvement before stopping
    calibrate: bool = True  # fit a temperature on the validation split
    seed: int = 42  # fixes initialisation and batch order

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing {self.label_smoothing} must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be positive")


@dataclass
class FitResult:
    head: ServingHead
    epochs_run: int
    best_val_loss: float
    temperature: float


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             head_config: HeadConfig, config: TrainConfig = TrainConfig()) -> FitResult:
    """Train an MLP/logreg head; returns it wrapped for serving, temperature fitted."""
    torch.manual_seed(config.seed)
    xt, yt = torch.from_numpy(x_train).float(), torch.from_numpy(y_train).long()
    xv, yv = torch.from_numpy(x_val).float(), torch.from_numpy(y_val).long()
    head = MLPHead(head_config)
    if head_config.standardize:
        head.emb_mean.copy_(xt.mean(0))
        head.emb_std.copy_(xt.std(0).clamp_min(1e-6))
    optim = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    best, best_state, stale, epoch = math.inf, None, 0, 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        for idx in torch.randperm(len(xt), generator=gen).split(config.batch_size):
            loss = F.cross_entropy(head(xt[idx]), yt[idx], label_smoothing=config.label_smoothing)
            optim.zero_grad()
            loss.backward()
            optim.step()
        head.eval()
        with torch.no_grad():
            val = F.cross_entropy(head(xv), yv).item()
        if val < best - 1e-5:
            best, stale = val, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None  # at least one epoch ran
    head.load_state_dict(best_state)
    head.eval()
    temperature = 1.0
    if config.calibrate:
        with torch.no_grad():
            temperature = fit_temperature(head(xv), yv)
    return FitResult(ServingHead(head, temperature).eval(), epoch, best, temperature)


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
    return float(log_t.exp().clamp(0.05, 20.0).item())
