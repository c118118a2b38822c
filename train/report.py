"""The per-run report: Markdown with PNG figures that a person reads after `headserve train`.

Figures use matplotlib's Agg backend (no display). The directory is built beside its target and
renamed into place, so a crash never leaves half a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from headserve.artifact import HeadMeta
from headserve.drift_report import METRIC_MEANINGS
from headserve.encoders import UNTRAINED_NOTE
from headserve.fsutil import publish_dir, staging_dir
from headserve.train.dataset import DataReport
from headserve.train.evaluation import ece_interval, reliability

REPORT_FILE = "report.md"


def _plot_confusion(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(path: Path, before: np.ndarray, after: np.ndarray, labels: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, probs in (("before calibration", before), ("after calibration", after)):
        pts = reliability(probs, labels)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_groups(meta: HeadMeta) -> dict[str, list[int]]:
    """Foreground classes split by training frequency: ``frequent`` at or above the median count, ``rare`` below.

    The frequencies come from meta.json's ``log_priors`` (log training class frequencies), so a
    report can be rebuilt from the artifact alone. Background classes belong to neither group.
    """
    priors = np.asarray(meta.extra.get("log_priors", []), dtype=np.float64)
    fg = [c for c in range(len(meta.classes)) if c not in set(meta.background_indices)]
    if len(priors) != len(meta.classes) or not fg:
        return {"all": fg}
    median = float(np.median(priors[fg]))
    return {"frequent": [c for c in fg if priors[c] >= median], "rare": [c for c in fg if priors[c] < median]}


def _plot_reliability_groups(path: Path, groups: Mapping[str, list[int]], before: np.ndarray, after: np.ndarray,
                             labels: np.ndarray) -> None:
    """One reliability panel per class group: crops whose true class is in the group, before/after T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), squeeze=False)
    for ax, (name, classes) in zip(axes[0], groups.items()):
        rows = np.isin(labels, classes)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        if rows.any():
            for what, probs in (("before calibration", before), ("after calibration", after)):
                pts = reliability(probs[rows], labels[rows])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=what)
            ax.legend(fontsize=7)
        ax.set_title(f"{name} classes ({int(rows.sum())} crops)", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _calibration_lines(meta: HeadMeta, groups: Mapping[str, list[int]], probs: np.ndarray, uncalibrated: np.ndarray,
                       labels: np.ndarray) -> list[str]:
    """The temperature decision and ECE with bootstrap intervals, overall and per class group."""
    cal = meta.extra.get("calibration")
    lines = ["## Calibration", ""]
    if cal:
        lines.append(f"- temperature served: {cal['temperature']:.4g}. {cal['reason']}.")
    lines += ["- ECE: 15 bins on the test crops, percentile bootstrap 95% interval over 1,000 resamples (seed 0).",
              "", "| crops | n | ECE before | ECE after |", "|---|---|---|---|"]
    for name, rows in (("all", np.ones(len(labels), bool)), *((g, np.isin(labels, c)) for g, c in groups.items())):
        if rows.sum() < 2:
            continue
        b, a = ece_interval(uncalibrated[rows], labels[rows]), ece_interval(probs[rows], labels[rows])
        lines.append(f"| {name} | {int(rows.sum())} | {b.plain()} | {a.plain()} |")
    return lines + [""]


def _selection_lines(meta: HeadMeta) -> list[str]:
    """What was chosen on validation: the --select grid and, for linear heads, scikit-learn's C grid."""
    lines: list[str] = []
    sel = meta.extra.get("selection")
    if sel:
        lines += ["## Model selection (validation split)", "", f"- criterion: {sel['criterion']}",
                  f"- grid: {sel['grid']}", f"- chosen: {sel['chosen']} (validation macro F1 fg "
                  f"{sel['val_macro_f1_fg']:.4f})", "", "| candidate | val macro F1 (fg) | val NLL |", "|---|---|---|"]
        lines += [f"| {c['params']} | {c['val_macro_f1_fg']:.4f} | {c['val_nll']:.4f} |" for c in sel["candidates"]]
        lines.append("")
    lin = meta.extra.get("linear_fit")
    if lin:
        lines += ["## Linear head fit", "", f"- {lin['method']}; {lin['criterion']}", f"- grid: {lin['grid']}",
                  f"- chosen: {lin['chosen']} (validation macro F1 fg {lin['val_macro_f1_fg']:.4f}, "
                  f"{lin['lbfgs_iterations']} L-BFGS iterations)",
                  f"- recipe knobs that do not apply to this fit: {', '.join(lin['recipe_knobs_not_applied']) or 'none'}",
                  ""]
    return lines


def write_report(directory: str | Path, meta: HeadMeta, metrics: Mapping[str, object], probs: np.ndarray,
                 uncalibrated: np.ndarray, labels: np.ndarray, timings: Mapping[str, float],
                 data: DataReport) -> Path:
    """Write report.md, confusion.png, reliability.png and reliability_groups.png; returns report.md's path."""
    tmp = staging_dir(directory)
    _plot_confusion(tmp / "confusion.png", metrics["confusion"], meta.classes)  # type: ignore[arg-type]
    _plot_reliability(tmp / "reliability.png", uncalibrated, probs, labels)
    groups = class_groups(meta)
    _plot_reliability_groups(tmp / "reliability_groups.png", groups, uncalibrated, probs, labels)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    keys = ("macro_f1_fg", "weighted_f1_fg", "macro_precision_fg", "macro_recall_fg", "accuracy", "ece_before",
            "ece_after", "temperature", "ood_auroc", "ood_auroc_all", "ood_flagged_test_fg", "ood_flagged_test_background",
            "epochs", "n_train", "n_val", "n_test")
    lines = [f"# Head `{meta.name}`", "",
             *([f"**{UNTRAINED_NOTE}** (encoder {meta.encoder.name}, a tiny twin for trying the commands)", ""]
               if meta.encoder_untrained else []),
             f"- encoder: {meta.encoder.name or meta.encoder.model} ({meta.encoder.encoder_type}, {meta.encoder.mode} "
             f"mode), head: {meta.head_type} "
             f"{meta.head_config.get('hidden', ())}, classifier: {meta.head_config.get('classifier', 'linear')}, "
             f"profile: {meta.extra.get('profile', 'custom')}",
             f"- recipe knobs: {meta.extra.get('recipe', {})}",
             f"- OOD threshold (Mahalanobis, shared covariance): {meta.ood_threshold}", f"- {data.summary()}",
             *([f"- {meta.extra['split']}"] if meta.extra.get("split") else []), "",
             "## Metrics (held-out test split; `_fg`: foreground classes only, others as their row says)", "",
             "| metric | value | what it counts |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(metrics[k])} | {METRIC_MEANINGS.get(k, '')} |" for k in keys if metrics.get(k) is not None]
    lines += ["", *_calibration_lines(meta, groups, probs, uncalibrated, labels), *_selection_lines(meta)]
    lines += ["## Per class", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, row in metrics["per_class"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "## Phase timings", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timings.items() if k != "report"]
    lines += ["", "## Figures", "", "![confusion matrix](confusion.png)", "",
              "![reliability diagram](reliability.png)", "",
              f"![reliability per class group ({', '.join(f'{g}: {len(c)} classes' for g, c in groups.items())})]"
              "(reliability_groups.png)", ""]
    if data.problems:
        lines += ["## Skipped data", "", *[f"- {p}" for p in data.problems[:200]], ""]
    (tmp / REPORT_FILE).write_text("\n".join(lines))
    return publish_dir(tmp, directory) / REPORT_FILE
