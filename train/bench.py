"""Training benchmarks: recipe quality on a long-tailed real-image set, and head training speed.

1. Long-tailed digits: scikit-learn's ``load_digits`` scans drawn on scikit-image textures, classes
   subsampled to an exponential tail, plus background crops. Embeddings from the tiny random CLIP
   and DINOv3 twins and from raw pixels (a stand-in encoder: the crop at 16x16 grey, L2-normalised).
   The ``full`` MLP is compared with the seeds' baseline, scikit-learn's LogisticRegression, on
   foreground macro F1 and ECE (15 bins) before and after temperature scaling, next to the served
   ArcFace head (``arcface`` profile); Mahalanobis OOD AUROC with each digit held out in turn.
2. Speed: the ``full`` MLP on 100,000 x 1,024 structured random embeddings (20 Gaussian classes, a
   long tail) against scikit-learn's LogisticRegression on the same data, wall-clock on this machine.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headserve.head import HeadConfig
from headserve.train.metrics import classification_metrics, expected_calibration_error
from headserve.train.recipe import profile_config
from headserve.train.trainer import fit_head, head_config_for


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the benchmarks (the defaults are the ones the README reports)."""

    num_images: int = 400  # long-tailed digits images
    tail: float = 0.45  # class k keeps exp(-tail * k) of its digits
    classes: tuple[int, ...] = tuple(range(8))  # digits used as classes
    hidden: tuple[int, ...] = (256,)  # MLP of the quality benchmark
    seeds: tuple[int, ...] = (42, 43, 44)  # training seeds of each MLP row: tail classes have few test crops
    speed_rows: int = 100_000  # embeddings in the speed benchmark
    speed_dim: int = 1024  # their width
    speed_classes: int = 20  # their classes
    speed_hidden: tuple[int, ...] = (768, 384)  # MLP of the speed benchmark
    speed_epochs: int = 10  # epochs cap of the speed benchmark (early stopping may end sooner)


def _raw_pixels(pixels: np.ndarray) -> np.ndarray:
    """The stand-in encoder: crops as 16x16 grey pixels, centred and L2-normalised."""
    from PIL import Image

    x = np.stack([np.asarray(Image.fromarray(p).convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
                  for p in pixels])
    x -= x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _sklearn_logreg(x_tr, y_tr, x_te, max_iter: int = 1000) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    model = LogisticRegression(max_iter=max_iter).fit(x_tr, y_tr)
    probs = np.zeros((len(x_te), int(y_tr.max()) + 1), np.float32)
    probs[:, model.classes_] = model.predict_proba(x_te)
    return probs, time.perf_counter() - t0


def _mlp(x_tr, y_tr, x_va, y_va, x_te, n_cls: int, hidden, epochs: int = 150, profile: str = "full",
         seed: int = 42):
    cfg = profile_config(profile, epochs=epochs, seed=seed)
    hc = head_config_for(cfg, x_tr.shape[1], n_cls, hidden)
    t0 = time.perf_counter()
    fit = fit_head(x_tr, y_tr, x_va, y_va, hc, cfg)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        logits, probs, _ = fit.head(torch.from_numpy(x_te))
    return torch.softmax(logits, -1).numpy(), probs.numpy(), seconds, fit


def _ood_aurocs(emb: np.ndarray, labels: np.ndarray, tr: np.ndarray, te: np.ndarray,
                background: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mahalanobis OOD AUROC for each foreground class in turn left out of the statistics.

    Returns the AUROCs against known foreground test crops and against every known test crop.
    """
    from headserve.head import MLPHead, ServingHead
    from headserve.train.metrics import ood_auroc
    from headserve.train.ood import attach_ood, fit_ood, foreground, ood_scores

    n_cls = int(labels.max()) + 1
    fg, every = [], []
    for held_out in (c for c in range(n_cls) if c not in background):
        keep = tr[labels[tr] != held_out]
        head = ServingHead(MLPHead(HeadConfig(emb.shape[1], n_cls)))
        attach_ood(head, fit_ood(emb[keep], labels[keep], n_cls))
        known, unknown = te[labels[te] != held_out], ood_scores(head, emb[te[labels[te] == held_out]])
        known_scores = ood_scores(head, emb[known])
        fg.append(ood_auroc(known_scores[foreground(labels[known], background)], unknown))
        every.append(ood_auroc(known_scores, unknown))
    return np.array(fg), np.array(every)


def _span(values: np.ndarray) -> str:
    return f"{values.mean():.2f} ({values.min():.2f}-{values.max():.2f})"


def quality(config: BenchConfig, work: Path) -> list[str]:
    from headserve.encoders import get_encoder
    from headserve.train.pipeline import TrainRequest, prepare
    from headserve.train.synth import SynthConfig, build_digits_dataset

    ds = build_digits_dataset(work / "digits_lt", SynthConfig(num_images=config.num_images, tail=config.tail,
                                                              classes=config.classes))
    lines = ["## Long-tailed digits: full MLP vs logistic regression", "",
             f"`SynthConfig(num_images={config.num_images}, tail={config.tail}, classes={len(config.classes)})` + 1 "
             f"background class; grouped split seed 42, 20% test; MLP {config.hidden}, profiles `full` and "
             f"`arcface`, mean ± sd over training seeds {list(config.seeds)}. ECE: 15 bins, before -> after "
             "temperature scaling. OOD AUROC: each digit in turn left out "
             "of the Mahalanobis statistics and told apart from known foreground test crops (fg) or from every "
             "known test crop, background included (all); mean (min-max) over the held-out digits.", "",
             "| embeddings | head | macro F1 (fg) | weighted F1 (fg) | ECE before | ECE after | fit s |",
             "|---|---|---|---|---|---|---|"]
    ood_lines = ["", "| embeddings | OOD AUROC vs known fg | OOD AUROC vs all known |", "|---|---|---|"]
    for enc in ("clip:tiny", "dinov3:tiny", "raw-pixels"):
        p = prepare(TrainRequest(dataset=ds, encoder=get_encoder("clip:tiny" if enc == "raw-pixels" else enc),
                                 out=work / "unused", cache_dir=work / "cache"))
        emb = _raw_pixels(p.pixels) if enc == "raw-pixels" else p.emb
        n_cls = len(p.classes)
        tr, va, te = p.fit_idx, p.val_idx, p.test_idx
        y_te = p.labels[te]
        lr_probs, lr_s = _sklearn_logreg(emb[np.r_[tr, va]], p.labels[np.r_[tr, va]], emb[te])
        m = classification_metrics(lr_probs, y_te, p.classes, p.background)
        ece = expected_calibration_error(lr_probs, y_te)
        lines.append(f"| {enc} | sklearn logreg | {m['macro_f1_fg']:.3f} | {m['weighted_f1_fg']:.3f} | {ece:.3f} | - "
                     f"| {lr_s:.1f} |")
        for profile in ("full", "arcface"):
            runs = []  # (macro F1, weighted F1, ECE before, ECE after, seconds) per seed
            for seed in config.seeds:
                before, after, s, _ = _mlp(emb[tr], p.labels[tr], emb[va], p.labels[va], emb[te], n_cls,
                                           config.hidden, profile=profile, seed=seed)
                m = classification_metrics(after, y_te, p.classes, p.background)
                runs.append((m["macro_f1_fg"], m["weighted_f1_fg"], expected_calibration_error(before, y_te),
                             expected_calibration_error(after, y_te), s))
            mean, sd = np.mean(runs, axis=0), np.std(runs, axis=0)
            lines.append(f"| {enc} | MLP {profile} | {mean[0]:.3f} ± {sd[0]:.3f} | {mean[1]:.3f} ± {sd[1]:.3f} | "
                         f"{mean[2]:.3f} | {mean[3]:.3f} | {mean[4]:.1f} |")
        fg, every = _ood_aurocs(emb, p.labels, tr, te, p.background)
        ood_lines.append(f"| {enc} | {_span(fg)} | {_span(every)} |")
    return lines + ood_lines


def structured_embeddings(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around random unit centres, long-tailed (class k has weight 0.85^k), L2-normalised."""
    rng = np.random.default_rng(seed)
    weights = 0.85 ** np.arange(classes)
    y = rng.choice(classes, size=n, p=weights / weights.sum())
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    x = centres[y] * 0.004 + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.int64)


def speed(config: BenchConfig) -> list[str]:
    x, y = structured_embeddings(config.speed_rows, config.speed_dim, config.speed_classes)
    n_te = n_va = config.speed_rows // 10
    te, va, tr = slice(0, n_te), slice(n_te, n_te + n_va), slice(n_te + n_va, None)
    _, after, mlp_s, fit = _mlp(x[tr], y[tr], x[va], y[va], x[te], config.speed_classes, config.speed_hidden,
                                     epochs=config.speed_epochs)
    lr_probs, lr_s = _sklearn_logreg(np.r_[x[tr], x[va]], np.r_[y[tr], y[va]], x[te], max_iter=100)
    names = [str(c) for c in range(config.speed_classes)]
    f_mlp = classification_metrics(after, y[te], names)["macro_f1_fg"]
    f_lr = classification_metrics(lr_probs, y[te], names)["macro_f1_fg"]
    return ["## Training speed", "",
            f"{config.speed_rows:,} x {config.speed_dim} structured random embeddings, {config.speed_classes} classes "
            f"(80% train, 10% validation, 10% test), torch threads: {torch.get_num_threads()}.", "",
            "| head | wall-clock s | epochs | macro F1 |", "|---|---|---|---|",
            f"| MLP {config.speed_hidden} `full` (max {config.speed_epochs} epochs) | {mlp_s:.1f} | {fit.epochs_run} "
            f"| {f_mlp:.3f} |",
            f"| sklearn LogisticRegression (lbfgs, max_iter=100) | {lr_s:.1f} | - | {f_lr:.3f} |"]


def run(out: Path, config: BenchConfig = BenchConfig()) -> list[str]:
    with tempfile.TemporaryDirectory(dir=out) as work:
        return ["# Training", "", *quality(config, Path(work)), "", *speed(config)]


if __name__ == "__main__":
    import sys

    print("\n".join(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))))
