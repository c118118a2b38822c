"""Training benchmark (``headserve.app.bench.training``): heads against a tuned baseline on two real-image sets,
and training speed.

1. Quality, on two YOLO sets built offline from real images: long-tailed digits (scikit-learn's
   ``load_digits`` scans on scikit-image textures, classes subsampled to an exponential tail) and
   faces vs non-faces (``skimage.data.lfw_subset()`` on the same textures), each with a background
   class and a split grouped by source image. Embeddings from the tiny random CLIP and DINOv3 twins
   and from raw pixels (a stand-in encoder: the crop at 16x16 grey, centred, L2-normalised).
   The baseline is scikit-learn's StandardScaler + LogisticRegression with C and class weighting
   chosen on the validation split (``headserve.train.selection``), fitted on the same fit split as
   the heads. Each head row is the mean ± sd over training seeds, with the paired bootstrap 95%
   interval of its macro F1 (fg) minus the baseline's on the same test crops; an interval that spans
   zero is written as a tie. ECE (15 bins) before -> after temperature, with bootstrap intervals.
   Mahalanobis OOD AUROC with each foreground class held out in turn.
2. Speed: the ``full`` MLP on 100,000 x 1,024 structured random embeddings (20 Gaussian classes, a
   long tail) against one scikit-learn LogisticRegression fit on the same data, wall-clock here.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from headserve.head import HeadConfig
from headserve.train.dataset import load_crop
from headserve.train.embed import pixels_of
from headserve.train.evaluation import (
    BOOTSTRAP_REPS,
    Interval,
    bootstrap_interval,
    classification_metrics,
    comparison,
    expected_calibration_error,
    macro_f1_fg,
    paired_f1_difference,
)
from headserve.train.profiles import profile_config
from headserve.train.trainer import FitResult, fit_head, head_config_for


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the benchmarks (the defaults are the ones the README reports)."""

    num_images: int = 400  # long-tailed digits images
    tail: float = 0.45  # class k keeps exp(-tail * k) of its digits
    classes: tuple[int, ...] = tuple(range(8))  # digits used as classes
    hidden: tuple[int, ...] = (256,)  # MLP of the quality benchmark
    seeds: tuple[int, ...] = (42, 43, 44)  # training seeds of each head row: tail classes have few test crops
    speed_rows: int = 100_000  # embeddings in the speed benchmark
    speed_dim: int = 1024  # their width
    speed_classes: int = 20  # their classes
    speed_hidden: tuple[int, ...] = (768, 384)  # MLP of the speed benchmark
    speed_epochs: int = 10  # epochs cap of the speed benchmark (early stopping may end sooner)


# `--smoke`: few images, one seed, a small speed set: shows the benchmark runs, measures nothing.
SMOKE = BenchConfig(num_images=60, seeds=(42,), speed_rows=2_000, speed_dim=64, speed_classes=5, speed_hidden=(32,),
                    speed_epochs=2)

def _digits(root: Path, config: BenchConfig) -> tuple[Path, str]:
    from headserve.train.synth import SynthConfig, build_digits_dataset

    ds = build_digits_dataset(root, SynthConfig(num_images=config.num_images, tail=config.tail, classes=config.classes))
    return ds, f"`SynthConfig(num_images={config.num_images}, tail={config.tail}, classes={len(config.classes)})`"


def _faces(root: Path, config: BenchConfig) -> tuple[Path, str]:
    from headserve.train.faces import FacesConfig, build_faces_dataset

    return build_faces_dataset(root, FacesConfig()), "`FacesConfig()`: the 200 LFW patches, each drawn once"


# benchmark set name -> builder returning (dataset root, how it was built)
DATASETS: dict[str, Callable[[Path, BenchConfig], tuple[Path, str]]] = {
    "Long-tailed digits": _digits,
    "Faces vs non-faces": _faces,
}
EMBEDDINGS = ("clip:tiny", "dinov3:tiny", "raw-pixels")


def _raw_pixels(pixels: np.ndarray) -> np.ndarray:
    """The stand-in encoder: crops as 16x16 grey pixels, centred and L2-normalised."""
    from PIL import Image

    x = np.stack([np.asarray(Image.fromarray(p).convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
                  for p in pixels])
    x -= x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _sklearn_logreg(x_tr, y_tr, x_te, max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """One LogisticRegression fit at scikit-learn's defaults: the speed benchmark's reference only."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    model = LogisticRegression(max_iter=max_iter).fit(x_tr, y_tr)
    probs = np.zeros((len(x_te), int(y_tr.max()) + 1), np.float32)
    probs[:, model.classes_] = model.predict_proba(x_te)
    return probs, time.perf_counter() - t0


def _mlp(x_tr, y_tr, x_va, y_va, x_te, n_cls: int, hidden, epochs: int = 150, profile: str = "full",
         seed: int = 42, background: tuple[int, ...] = ()):
    cfg = profile_config(profile, epochs=epochs, seed=seed)
    hc = head_config_for(cfg, x_tr.shape[1], n_cls, hidden)
    t0 = time.perf_counter()
    fit = fit_head(x_tr, y_tr, x_va, y_va, hc, cfg, background=background)
    seconds = time.perf_counter() - t0
    return (*_test_probs(fit, x_te), seconds, fit)


def _test_probs(fit: FitResult, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax of logits, served probabilities) of a fitted head on the test embeddings."""
    with torch.no_grad():
        logits, probs, _ = fit.head(torch.from_numpy(x_te))
    return torch.softmax(logits, -1).numpy(), probs.numpy()


def _ood_aurocs(emb: np.ndarray, labels: np.ndarray, tr: np.ndarray, te: np.ndarray,
                background: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mahalanobis OOD AUROC for each foreground class in turn left out of the statistics.

    Returns the AUROCs against known foreground test crops and against every known test crop.
    """
    from headserve.head import MLPHead, ServingHead
    from headserve.train.evaluation import ood_auroc
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


@dataclass
class _Runs:
    """One head row: per training seed, the test probabilities before/after T and the fit."""

    before: list[np.ndarray]
    after: list[np.ndarray]
    temperatures: list[float]
    kept_one: list[str]  # the calibration's reason where it kept T = 1
    seconds: list[float]
    notes: list[str]


@dataclass(frozen=True)
class HeadRow:
    """One head row of the quality table."""

    profile: str  # recipe profile the head starts from
    hidden: tuple[int, ...] | None  # MLP widths; None: the benchmark's MLP (BenchConfig.hidden); (): linear
    select: bool = False  # choose the head on validation (`train --select`) with the first seed
    deterministic: bool = False  # training seeds do not enter the fit (L-BFGS): one fit, no spread to show


HEADS: dict[str, HeadRow] = {
    "linear (`--hidden logreg`)": HeadRow("full", (), deterministic=True),
    "MLP `full`": HeadRow("full", None),
    "MLP `arcface`": HeadRow("arcface", None),
    "`--select` (grid on validation)": HeadRow("full", None, select=True),
}


def _fit_row(row: HeadRow, hidden: tuple[int, ...], seeds: tuple[int, ...], data: dict[str, Any],
             n_cls: int, background: tuple[int, ...]) -> _Runs:
    """Fit one head row for every seed. A ``select`` row chooses on validation once, with the first
    seed, as ``train --select`` does; the other seeds retrain the chosen configuration."""
    from dataclasses import replace

    from headserve.train.selection import select_head

    runs = _Runs([], [], [], [], [], [])
    x_tr, y_tr, x_va, y_va, x_te = data["x_tr"], data["y_tr"], data["x_va"], data["y_va"], data["x_te"]
    chosen = None
    for seed in seeds[:1] if row.deterministic else seeds:
        t0 = time.perf_counter()
        if row.select and chosen is None:
            sel = select_head(x_tr, y_tr, x_va, y_va, n_cls, profile_config(row.profile, seed=seed), background)
            fit, chosen = sel.fit, sel
            runs.notes.append(f"{sel.chosen.params}")
        else:
            cfg = replace(chosen.config, seed=seed) if chosen is not None else profile_config(row.profile, seed=seed)
            width = chosen.hidden if chosen is not None else hidden
            fit = fit_head(x_tr, y_tr, x_va, y_va, head_config_for(cfg, x_tr.shape[1], n_cls, width), cfg,
                           background=background)
            if fit.linear_fit is not None and not row.select:
                runs.notes.append(f"C={fit.linear_fit['chosen']['C']:g}, "
                                  f"{fit.linear_fit['chosen']['class_weight'] or 'unweighted'}")
        runs.seconds.append(time.perf_counter() - t0)
        before, after = _test_probs(fit, x_te)
        runs.before.append(before)
        runs.after.append(after)
        runs.temperatures.append(fit.temperature)
        if fit.calibration is not None and fit.temperature == 1.0 and fit.calibration.fitted is not None:
            runs.kept_one.append(fit.calibration.reason)
    return runs


def _mean_ece(probs: list[np.ndarray], labels: np.ndarray) -> Interval:
    """Mean-over-seeds ECE with its bootstrap interval over test crops."""
    return bootstrap_interval(lambda idx: float(np.mean([expected_calibration_error(p[idx], labels[idx])
                                                         for p in probs])), len(labels))


def _quality_table(name: str, ds: Path, built: str, config: BenchConfig, work: Path) -> tuple[list[str], list[str]]:
    from headserve.encoders import get_encoder
    from headserve.train.pipeline import TrainRequest, prepare
    from headserve.train.selection import tune_logreg

    lines = [f"## {name}: heads vs the tuned logistic-regression baseline", "",
             f"{built} + 1 background class; split grouped by source image, seed 42 (20% test, 20% of the rest "
             f"for validation); MLP {config.hidden}; training seeds {list(config.seeds)}. Baseline: scikit-learn "
             "StandardScaler + LogisticRegression (lbfgs) fitted on the fit split, C in {0.01, 0.1, 1, 10, 100, "
             "1000} x class_weight {None, balanced} chosen by validation macro F1 (fg), as headserve's heads are "
             "fitted and early-stopped. Delta: macro F1 (fg) of the row minus the baseline's (seed mean), paired "
             f"bootstrap 95% interval over the test crops ({BOOTSTRAP_REPS} resamples, seed 0). ECE: 15 bins, seed "
             "mean, bootstrap 95% interval. T: served temperatures (kept at 1 where the fitted T did not lower "
             "validation NLL or hit its bound). The linear head is scikit-learn's L-BFGS fit (seeds do not enter "
             "it: one fit). `--select` chooses on validation once, with seed "
             f"{config.seeds[0]}, and retrains the chosen configuration with the other seeds. ECE resampled with "
             "duplicated crops is biased upwards, so its interval can sit above the full-set value.", "",
             "| embeddings | head | macro F1 (fg) | delta vs baseline [95%] | verdict | ECE before | ECE after "
             "| T served | selected | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ood = ["", f"OOD AUROC ({name.lower()}): each foreground class in turn left out of the Mahalanobis statistics "
           "and told apart from known foreground test crops (fg) or from every known test crop, background "
           "included (all); mean (min-max) over the held-out classes.", "",
           "| embeddings | OOD AUROC vs known fg | OOD AUROC vs all known |", "|---|---|---|"]
    notes: list[str] = []
    sizes = ""
    for enc in EMBEDDINGS:
        p = prepare(TrainRequest(dataset=ds, encoder=get_encoder("clip:tiny" if enc == "raw-pixels" else enc),
                                 out=work / "unused", cache_dir=work / "cache"))
        # Training keeps no crops; the stand-in encoder decodes them again (small sets: a few MB of pixels).
        emb = _raw_pixels(pixels_of((load_crop(o) for o in p.objects), p.spec.preprocess)) if enc == "raw-pixels" \
            else p.emb
        n_cls, bg = len(p.classes), tuple(p.background)
        fg = [c for c in range(n_cls) if c not in bg]
        tr, va, te = p.fit_idx, p.val_idx, p.test_idx
        y_te = p.labels[te]
        data = {"x_tr": emb[tr], "y_tr": p.labels[tr], "x_va": emb[va], "y_va": p.labels[va], "x_te": emb[te]}
        t0 = time.perf_counter()
        base = tune_logreg(data["x_tr"], data["y_tr"], data["x_va"], data["y_va"], n_cls, bg)
        base_s = time.perf_counter() - t0
        base_probs = base.predict_proba(data["x_te"])
        base_f1 = macro_f1_fg(base_probs.argmax(1), y_te, fg, n_cls)
        lines.append(f"| {enc} | baseline: sklearn logreg | {base_f1:.3f} (deterministic) | - | - | "
                     f"{_mean_ece([base_probs], y_te).plain()} | - | - | {base.label()} | {base_s:.1f} |")
        for head, row in HEADS.items():
            runs = _fit_row(row, config.hidden if row.hidden is None else row.hidden, config.seeds, data, n_cls, bg)
            f1 = np.array([macro_f1_fg(a.argmax(1), y_te, fg, n_cls) for a in runs.after])
            spread = "(deterministic)" if row.deterministic else f"± {f1.std():.3f}"
            delta = paired_f1_difference(y_te, [a.argmax(1) for a in runs.after], [base_probs.argmax(1)], fg, n_cls)
            temps = ", ".join(f"{t:.2g}" for t in runs.temperatures)
            chosen = "; ".join(sorted(set(runs.notes))) or "-"
            lines.append(f"| {enc} | {head} | {f1.mean():.3f} {spread} | {delta} | {comparison(delta)} | "
                         f"{_mean_ece(runs.before, y_te).plain()} | {_mean_ece(runs.after, y_te).plain()} | {temps} "
                         f"| {chosen} | {np.mean(runs.seconds):.1f} |")
            notes += [f"- {enc}, {head}: {r}" for r in sorted(set(runs.kept_one))]
        fg_auc, every = _ood_aurocs(emb, p.labels, tr, te, p.background)
        ood.append(f"| {enc} | {_span(fg_auc)} | {_span(every)} |")
        sizes = f"{len(tr)} fit / {len(va)} validation / {len(te)} test crops ({len(fg)} foreground classes)"
    lines.insert(3, f"Crops: {sizes}.")
    lines.insert(4, "")
    if notes:
        lines += ["", "Temperatures kept at 1:", "", *notes]
    return lines, ood


def quality(config: BenchConfig, work: Path) -> list[str]:
    out: list[str] = []
    for name, build in DATASETS.items():
        ds, built = build(work / name.split()[0].lower(), config)
        table, ood = _quality_table(name, ds, built, config, work)
        out += [*table, *ood, ""]
    return out


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
            f"| sklearn LogisticRegression (lbfgs, max_iter=100, C=1: one fit; the tuned baseline fits 12) "
            f"| {lr_s:.1f} | - | {f_lr:.3f} |"]


def run(out: Path, smoke: bool = False, config: BenchConfig | None = None) -> list[str]:
    config = config or (SMOKE if smoke else BenchConfig())
    with tempfile.TemporaryDirectory(dir=out) as work:
        t0 = time.perf_counter()
        q = quality(config, Path(work))
        t1 = time.perf_counter()
        s = speed(config)
        t2 = time.perf_counter()
    return ["# Training", "", *q, "", *s, "",
            f"Run time of this module: quality {t1 - t0:.0f} s, speed {t2 - t1:.0f} s."]
