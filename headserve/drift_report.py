"""Where a person looks: a drift verdict beside the head's training metrics and reliability diagram.

``write_drift_report`` renders a ``DriftResult`` (headserve.drift) into a directory: ``drift.md`` with a
table of every check (value, threshold, verdict), the head's training metrics, and figures comparing
validation with the served window (class mix, confidence, OOD scores) next to the training reliability
diagram; ``drift.json`` holds the same verdict for machines. Training facts come in as plain numbers
(``HeadSummary``), so the report needs neither torch nor the artifact loader.

The directory is built beside its target and renamed into place: a crash never leaves half a report.
matplotlib (Agg, no display) is imported only when a report is written.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headserve.drift import DriftReference, DriftResult, Histogram
from headserve.errors import DriftReportError
from headserve.fsutil import publish_dir, staging_dir

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from headserve.artifact import HeadMeta

REPORT_FILE = "drift.md"
RESULT_FILE = "drift.json"
FIGURE_FILE = "drift.png"
# Without a window nothing is compared, so the files are not called drift: training.md, training.json, training.png.
TRAINING_STEM = "training"
# The training metrics shown, in this order, when the head has them (meta.json "metrics").
TRAINING_KEYS: tuple[str, ...] = ("macro_f1_fg", "accuracy", "ece_before", "ece_after", "temperature",
                                  "ood_auroc", "ood_flagged_test_fg", "ood_flagged_test_background", "n_train",
                                  "n_val", "n_test")
# What a training metric counts, where its name alone could be misread; both reports print it beside the name.
METRIC_MEANINGS: Mapping[str, str] = {
    "accuracy": "top-1 accuracy over every test crop, background crops included",
    "ece_before": "expected calibration error (15 bins) before temperature scaling, every test crop",
    "ece_after": "expected calibration error (15 bins) of the served probabilities, every test crop",
    "ood_flagged_test_fg": "share of test objects (foreground crops) above the OOD threshold; "
                           "near 1 - the quantile it was set at (0.05 at 0.95)",
    "ood_flagged_test_background": "share of test background crops above the OOD threshold (usually high, and "
                                   "harmless: background is answered as its own class)",
    "n_train": "crops the head was fitted on, background crops included",
    "n_val": "validation crops (early stopping, calibration), background crops included",
    "n_test": "test crops, background crops included",
}
# Each check's statistic, and on which side of its threshold it fails (headserve.drift's checks by name).
STATISTICS: Mapping[str, tuple[str, str]] = {
    "class_psi": ("PSI", "above"),
    "confidence_psi": ("PSI", "above"),
    "ood_rate": ("p-value", "below"),
    "ood_scores_ks": ("p-value", "below"),
}
VERDICTS: Mapping[bool, str] = {True: "pass", False: "DRIFT"}


@dataclass(frozen=True)
class HeadSummary:
    """What training measured about the head, as plain numbers (from meta.json and the training report)."""

    name: str  # the head's name
    version: str = ""  # the served version the window came from ("" when unknown)
    metrics: Mapping[str, float] = field(default_factory=dict)  # held-out metrics, meta.json "metrics"
    # Reliability diagram on held-out crops: (mean confidence, accuracy, count) per confidence bin, as
    # headserve.train.evaluation.reliability returns it.
    reliability: Sequence[tuple[float, float, int]] = ()

    def __post_init__(self) -> None:
        for point in self.reliability:
            if len(point) != 3 or not (0.0 <= point[0] <= 1.0 and 0.0 <= point[1] <= 1.0):
                raise DriftReportError(f"reliability point {point!r} of head {self.name!r} is not (confidence, "
                                       "accuracy, count) with both in [0, 1]; pass reliability() of the test split")


def summary_of(meta: HeadMeta) -> HeadSummary:
    """What a head's artifact says about its training: held-out metrics and the reliability diagram."""
    points = meta.extra.get("reliability_test") or ()
    return HeadSummary(name=meta.name, metrics=dict(meta.metrics),
                       reliability=tuple((float(c), float(a), int(n)) for c, a, n in points))


def write_drift_report(directory: str | Path, result: DriftResult | None, reference: DriftReference,
                       head: HeadSummary) -> Path:
    """Write drift.md, drift.json and drift.png into ``directory`` (replaced whole); returns drift.md's path.

    ``result`` None: no production window yet; the report shows training and validation alone, in training.md,
    training.json and training.png.
    """
    report, verdict_file, figure = ((REPORT_FILE, RESULT_FILE, FIGURE_FILE) if result is not None else
                                    tuple(f"{TRAINING_STEM}{suffix}" for suffix in (".md", ".json", ".png")))
    tmp = staging_dir(directory)
    try:
        figures = _plot_all(tmp / figure, result or _NO_WINDOW, reference, head)
        verdict = result.to_dict() if result is not None else {"drifted": None, "window_size": 0}
        (tmp / verdict_file).write_text(json.dumps({"head": head.name, "version": head.version,
                                                    **verdict}, indent=1) + "\n")
        (tmp / report).write_text(markdown(result, reference, head, figures))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_dir(tmp, directory) / report


def markdown(result: DriftResult | None, reference: DriftReference, head: HeadSummary,
             figures: Mapping[str, str] | None = None) -> str:
    """The report's text: verdict, one row per check, notes, training metrics, figures."""
    version = f" version {head.version}" if head.version else ""
    if result is None:
        verdict = "no production window given: training and validation only"
        window = "- window: none (pass one to compare it)"
    else:
        verdict = "**drifted**: at least one check failed" if result.drifted else "no drift: every check passed"
        served = (f" of served version {', '.join(result.versions)}" if result.versions
                  else " (served version not recorded)")
        window = (f"- window: {result.window_size} decided crops{served} from `{result.source}`"
                  f" ({result.skipped} errors or skips not compared)")
    lines = [f"# Drift report: head `{head.name}`{version}", "",
             f"- verdict: {verdict}",
             window,
             (f"- reference: {reference.n} validation objects (foreground crops only; training's n_val also "
              f"counts background crops), {len(reference.classes)} classes"
              + (f", OOD threshold {reference.ood_threshold:.4g} set at the {reference.ood_quantile:g} quantile"
                 if reference.ood_threshold is not None and reference.ood_quantile is not None else "")),
             ""]
    if result is not None:
        lines += ["## Checks", "", "| check | statistic | value | fails | verdict | detail |",
                  "|---|---|---|---|---|---|"]
        for c in result.checks:
            statistic, side = _statistic(c.name)
            lines.append(f"| {c.name} | {statistic} | {c.value:.4g} | {side} {c.threshold:g} | {VERDICTS[c.passed]} "
                         f"| {c.detail} |")
    if result is not None and result.notes:
        lines += ["", *[f"- {note}" for note in result.notes]]
    lines += ["", "## Training (held-out test split)", ""]
    shown = [k for k in TRAINING_KEYS if k in head.metrics]
    if shown:
        lines += ["| metric | value | what it counts |", "|---|---|---|",
                  *[f"| {k} | {_number(head.metrics[k])} | {METRIC_MEANINGS.get(k, '')} |" for k in shown]]
    else:
        lines.append("No training metrics were given.")
    if figures:
        lines += ["", "## Figures", "", *[f"![{title}]({name})\n" for name, title in figures.items()]]
    return "\n".join(lines) + "\n"


def _statistic(check: str) -> tuple[str, str]:
    """The statistic a check's value is, and on which side of the threshold it fails."""
    if check not in STATISTICS:
        raise DriftReportError(f"check {check!r} has no statistic in headserve.drift_report.STATISTICS; add it there "
                               "so its value is labelled")
    return STATISTICS[check]


def edge_labels(edges: Sequence[float]) -> list[str]:
    """Bin labels "a-b" with the fewest significant digits (3 at least) that tell every edge from its neighbours."""
    for digits in range(3, 10):
        shown = [f"{e:.{digits}g}" for e in edges]
        if all(a != b for a, b in itertools.pairwise(shown)):
            break
    return [f"{a}-{b}" for a, b in itertools.pairwise(shown)]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _shares(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum() if counts.sum() > 0 else counts


def _plot_all(path: Path, result: DriftResult, reference: DriftReference,
              head: HeadSummary) -> dict[str, str]:
    """Draw each figure that has data; file name -> caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str]] = [("classes", "top-1 class mix: validation vs window"),
                                     ("confidence", "top-1 confidence: validation vs window")]
    if reference.ood is not None and (result.window_ood is not None or result is _NO_WINDOW):
        panels.append(("ood", "OOD scores: validation vs window"))
    if head.reliability:
        panels.append(("reliability", "reliability diagram (training, held-out)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (kind, title) in zip(axes[0], panels):
        PLOTS[kind](ax, result, reference, head)
        ax.set_title(title, fontsize=9)
    title = "training only" if result is _NO_WINDOW else ("DRIFT" if result.drifted else "no drift")
    fig.suptitle(f"{head.name}: {title}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {path.name: " | ".join(title for _, title in panels)}


def _bars(ax: Axes, positions: np.ndarray, reference: np.ndarray, window: np.ndarray) -> None:
    ax.bar(positions - 0.2, reference, 0.4, label="validation")
    if window.any():  # no window yet: validation alone
        ax.bar(positions + 0.2, window, 0.4, label="window")
    ax.set_ylabel("share of crops")
    ax.legend(fontsize=7)


def _plot_classes(ax: Axes, result: DriftResult, reference: DriftReference, head: HeadSummary) -> None:
    x = np.arange(len(reference.classes))
    window = [result.window_class_counts.get(c, 0) for c in reference.classes]
    _bars(ax, x, _shares(reference.class_counts), _shares(window))
    ax.set_xticks(x, reference.classes, rotation=90, fontsize=7)


def _histogram_bins(ax: Axes, reference: Histogram, window: Histogram | None, xlabel: str) -> None:
    if window is not None and window.edges != reference.edges:  # bars of other bins would be drawn as if they fit
        raise DriftReportError(f"the window's {xlabel} bins {window.edges} are not the reference's {reference.edges}; "
                               "report a result with the reference it was compared against")
    x = np.arange(len(reference.counts))
    _bars(ax, x, _shares(reference.counts), _shares(window.counts if window is not None else np.zeros_like(x)))
    ax.set_xticks(x, edge_labels(reference.edges), rotation=90, fontsize=6)
    ax.set_xlabel(xlabel, fontsize=8)


def _plot_confidence(ax: Axes, result: DriftResult, reference: DriftReference, head: HeadSummary) -> None:
    _histogram_bins(ax, reference.confidence, result.window_confidence, "calibrated top-1 probability")


def _plot_ood(ax: Axes, result: DriftResult, reference: DriftReference, head: HeadSummary) -> None:
    if reference.ood is None:
        raise DriftReportError(f"head {head.name!r}: an OOD panel was asked for a reference without OOD scores")
    _histogram_bins(ax, reference.ood, result.window_ood, "OOD score (end bins open)")
    if reference.ood_threshold is not None and reference.ood_threshold in reference.ood.edges:
        ax.axvline(reference.ood.edges.index(reference.ood_threshold) - 0.5, color="k", ls=":", lw=1,
                   label="threshold")
        ax.legend(fontsize=7)


def _plot_reliability(ax: Axes, result: DriftResult, reference: DriftReference, head: HeadSummary) -> None:
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot([p[0] for p in head.reliability], [p[1] for p in head.reliability], "o-", ms=3, label="after calibration")
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)


# What the figures draw when no window was given: validation's bars alone.
_NO_WINDOW = DriftResult(checks=(), window_size=0, skipped=0, source="")

# Panel kind -> how it is drawn (one figure, one panel per kind with data).
PLOTS = {"classes": _plot_classes, "confidence": _plot_confidence, "ood": _plot_ood,
         "reliability": _plot_reliability}
