"""The per-run report: Markdown with PNG figures that a person reads after `headserve train`.

Figures use matplotlib's Agg backend (no display). The directory is built beside its target and
renamed into place, so a crash never leaves half a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from headserve.artifact import HeadMeta
from headserve.fsutil import publish_dir, staging_dir
from headserve.train.dataset import DataReport
from headserve.train.metrics import reliability

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


def write_report(directory: str | Path, meta: HeadMeta, metrics: Mapping[str, object], probs: np.ndarray,
                 uncalibrated: np.ndarray, labels: np.ndarray, timings: Mapping[str, float],
                 data: DataReport) -> Path:
    """Write report.md, confusion.png and reliability.png; returns the Markdown file's path."""
    tmp = staging_dir(directory)
    _plot_confusion(tmp / "confusion.png", metrics["confusion"], meta.classes)  # type: ignore[arg-type]
    _plot_reliability(tmp / "reliability.png", uncalibrated, probs, labels)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    keys = ("macro_f1_fg", "weighted_f1_fg", "macro_precision_fg", "macro_recall_fg", "accuracy", "ece_before",
            "ece_after", "temperature", "ood_auroc", "ood_auroc_all", "ood_flagged_test", "epochs", "n_train", "n_val",
            "n_test")
    lines = [f"# Head `{meta.name}`", "",
             f"- encoder: {meta.encoder_name or meta.encoder_model} ({meta.encoder_type}), head: {meta.head_type} "
             f"{meta.head_config.get('hidden', ())}, classifier: {meta.head_config.get('classifier', 'linear')}, "
             f"profile: {meta.extra.get('profile', 'custom')}",
             f"- recipe knobs: {meta.extra.get('recipe', {})}",
             f"- OOD threshold (Mahalanobis, shared covariance): {meta.ood_threshold}", f"- {data.summary()}", "",
             "## Metrics (held-out test split, foreground classes)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(metrics[k])} |" for k in keys if k in metrics]
    lines += ["", "## Per class", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, row in metrics["per_class"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "## Phase timings", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timings.items() if k != "report"]
    lines += ["", "## Figures", "", "![confusion matrix](confusion.png)", "",
              "![reliability diagram](reliability.png)", ""]
    if data.problems:
        lines += ["## Skipped data", "", *[f"- {p}" for p in data.problems[:200]], ""]
    (tmp / REPORT_FILE).write_text("\n".join(lines))
    return publish_dir(tmp, directory) / REPORT_FILE
