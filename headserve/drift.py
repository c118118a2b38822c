"""Has the world drifted from training? A served window of decisions against the head's validation reference.

A head ships with a ``DriftReference``: what it answered on its validation crops (top-1 class
frequencies, a histogram of calibrated top-1 confidence, its OOD scores and threshold). Production
collects a ``ServedWindow`` of the same quantities, either in the client (``RollingWindow``, an
``Observer``) or from the JSON Lines that ``headserve classify --output`` writes. ``compare`` runs four
checks and says which failed:

- population stability index (PSI) of the top-1 class frequencies: the mix of what is seen changed;
- PSI of the confidence histogram: the head is less (or more) sure than on validation;
- the OOD-flag rate against the rate validation had (about the rate the threshold was set for), by a
  one-sided binomial test that carries the uncertainty of that rate (beta-binomial);
- a two-sample Kolmogorov-Smirnov test of the window's OOD scores against a sample of validation's.

Both sides use *predicted* top-1 classes: a window has no true labels, and comparing predictions with
predictions keeps accuracy out of what is called drift. Numpy only (no scipy: the client machine that
runs ``headserve drift`` need not have it); the two tests are written out below and checked against
scipy in the tests.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headserve.errors import DriftConfigError, DriftError
from headserve.fsutil import write_text_atomic

if TYPE_CHECKING:  # the client's types, for hints only: the core does not import the client at run time
    from headserve.artifact import HeadMeta
    from headserve.client.decision import Prediction
    from headserve.client.discovery import HeadInfo

log = logging.getLogger("headserve.drift")
REFERENCE_FORMAT = 1  # bump when DriftReference's JSON changes shape; readers refuse what they do not know
CONFIDENCE_BINS = 10  # equal-mass bins of validation confidence: PSI's usual decile construction
OOD_SAMPLE_SIZE = 2000  # validation OOD scores kept for the two-sample test (bounded: it lives in meta.json)
# OOD score bounds as multiples of the head's threshold, so "how far past it" reads off a histogram directly:
# the drift report's bins (from 0) and the client's Prometheus buckets both use them.
OOD_THRESHOLD_MULTIPLES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
# Half a crop added to every bin on both sides before PSI (a Jeffreys prior): an empty bin would make
# ln(window / reference) infinite. A pseudo-count, unlike a fixed epsilon on the proportions, scales with
# the sample: a class missing from 100 crops costs little, one missing from 100,000 crops costs what it should.
PSEUDO_COUNT = 0.5


# ---------------------------------------------------------------------------------------------
# The reference, made once from the validation split.


@dataclass(frozen=True)
class Histogram:
    """Counts of values in bins; ``edges`` has one more entry than ``counts``, values outside land in the end bins."""

    edges: tuple[float, ...]  # increasing bin bounds
    counts: tuple[int, ...]  # values per bin

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts) + 1 or len(self.counts) < 1:
            raise DriftError(f"histogram with {len(self.edges)} edges and {len(self.counts)} counts; "
                             "it needs one edge more than counts")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise DriftError(f"histogram edges {self.edges} are not increasing")

    @classmethod
    def of(cls, values: np.ndarray, edges: Sequence[float]) -> Histogram:
        return cls(tuple(float(e) for e in edges), tuple(int(c) for c in bin_counts(values, edges)))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin, with values below the first edge or above the last counted in the end bins."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    return np.bincount(np.searchsorted(inner, np.asarray(values, np.float64), side="right"),
                       minlength=len(edges) - 1)


def confidence_edges(confidence: np.ndarray, bins: int = CONFIDENCE_BINS) -> tuple[float, ...]:
    """Bin bounds at the deciles of validation confidence, in [0, 1], ties merged (confidences pile up near 1)."""
    inner = np.quantile(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1]) if len(confidence) else []
    edges = np.unique(np.concatenate([[0.0], np.clip(inner, 0.0, 1.0), [1.0]]))
    return tuple(float(e) for e in edges) if len(edges) > 1 else (0.0, 1.0)


def ood_edges(threshold: float | None, scores: np.ndarray) -> tuple[float, ...]:
    """Bin bounds for OOD scores: multiples of the threshold, or deciles of the scores when there is none."""
    if threshold is not None and threshold > 0:
        return (0.0, *(threshold * m for m in OOD_THRESHOLD_MULTIPLES))
    edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, 11)))
    return tuple(float(e) for e in edges) if len(edges) > 1 else (float(scores.min()), float(scores.min()) + 1.0)


@dataclass(frozen=True)
class DriftReference:
    """What the head answered on its validation crops: the yardstick every served window is held against."""

    classes: tuple[str, ...]  # the head's classes, in probability order
    class_counts: tuple[int, ...]  # validation crops per predicted top-1 class
    confidence: Histogram  # calibrated top-1 confidence on validation crops
    ood: Histogram | None = None  # OOD scores on validation crops; None for a head without an OOD model
    ood_sample: tuple[float, ...] = ()  # up to OOD_SAMPLE_SIZE validation OOD scores, for the two-sample test
    ood_threshold: float | None = None  # the head's published threshold
    ood_quantile: float | None = None  # the quantile of foreground validation scores the threshold was set at
    validation_ood_rate: float | None = None  # share of all validation crops above the threshold (background too)

    def __post_init__(self) -> None:
        if len(self.class_counts) != len(self.classes):
            raise DriftError(f"drift reference has {len(self.class_counts)} class counts for {len(self.classes)} "
                             "classes; rebuild it with reference_from_validation")
        if self.ood_quantile is not None and not 0.0 < self.ood_quantile < 1.0:
            raise DriftError(f"ood_quantile={self.ood_quantile} is outside (0, 1)")

    @property
    def n(self) -> int:
        return int(sum(self.class_counts))

    @property
    def expected_ood_rate(self) -> float | None:
        """The share of crops the threshold flags by design: 1 - the quantile it was set at."""
        return None if self.ood_quantile is None else 1.0 - self.ood_quantile

    def to_dict(self, ood_figures: bool = True) -> dict[str, Any]:
        """The reference as JSON; ``ood_figures=False`` leaves out the threshold and its quantile, for meta.json,
        which stores them once beside the head's other fields (``reference_of`` puts them back)."""
        def hist(h: Histogram | None) -> dict[str, list[Any]] | None:
            return None if h is None else {"edges": list(h.edges), "counts": list(h.counts)}

        figures = {"ood_threshold": self.ood_threshold, "ood_quantile": self.ood_quantile} if ood_figures else {}
        return {"format": REFERENCE_FORMAT, "classes": list(self.classes), "class_counts": list(self.class_counts),
                "confidence": hist(self.confidence), "ood": hist(self.ood), "ood_sample": list(self.ood_sample),
                **figures, "validation_ood_rate": self.validation_ood_rate}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "drift reference") -> DriftReference:
        """Read what ``to_dict`` wrote; ``origin`` (a file, meta.json) names the source in errors."""
        if data.get("format") != REFERENCE_FORMAT:
            raise DriftError(f"{origin}: format {data.get('format')!r} is not {REFERENCE_FORMAT}, the one this "
                             "headserve reads; rebuild the reference with this version (retrain, or upgrade)")
        try:
            ood = data.get("ood")
            return cls(classes=tuple(str(c) for c in data["classes"]),
                       class_counts=tuple(int(c) for c in data["class_counts"]),
                       confidence=Histogram(tuple(map(float, data["confidence"]["edges"])),
                                            tuple(map(int, data["confidence"]["counts"]))),
                       ood=None if ood is None else Histogram(tuple(map(float, ood["edges"])),
                                                              tuple(map(int, ood["counts"]))),
                       ood_sample=tuple(float(s) for s in data.get("ood_sample", ())),
                       ood_threshold=_optional_float(data.get("ood_threshold")),
                       ood_quantile=_optional_float(data.get("ood_quantile")),
                       validation_ood_rate=_optional_float(data.get("validation_ood_rate")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"{origin}: malformed drift reference ({type(exc).__name__}: {exc}); "
                             "rebuild it with reference_from_validation") from exc

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically (temp file, then rename)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DriftError(f"drift reference {path} cannot be read ({exc})") from exc
        return cls.from_dict(data, origin=str(path))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def reference_from_validation(probs: np.ndarray, ood_scores: np.ndarray | None, classes: Sequence[str],
                              ood_threshold: float | None = None, ood_quantile: float | None = None,
                              seed: int = 0) -> DriftReference:
    """The reference of a head from its calibrated validation probabilities ``(N, C)`` and OOD scores ``(N,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise DriftError(f"validation probabilities of shape {probs.shape} do not fit {len(classes)} classes; "
                         "pass the calibrated probs (N, C) in class order")
    if len(probs) == 0:
        raise DriftError("no validation crops: a drift reference needs the validation split's answers")
    top = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), top]
    ood = ood_sample = None
    rate = None
    if ood_scores is not None:
        scores = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(probs):
            raise DriftError(f"{len(scores)} validation OOD scores for {len(probs)} validation crops")
        ood = Histogram.of(scores, ood_edges(ood_threshold, scores))
        keep = min(OOD_SAMPLE_SIZE, len(scores))
        ood_sample = tuple(float(s) for s in np.random.default_rng(seed).choice(scores, keep, replace=False))
        rate = None if ood_threshold is None else float((scores > ood_threshold).mean())
    return DriftReference(classes=tuple(classes),
                          class_counts=tuple(int(c) for c in np.bincount(top, minlength=len(classes))),
                          confidence=Histogram.of(confidence, confidence_edges(confidence)),
                          ood=ood, ood_sample=ood_sample or (), ood_threshold=ood_threshold,
                          ood_quantile=ood_quantile, validation_ood_rate=rate)


# ---------------------------------------------------------------------------------------------
# The served window: from the client's rolling store or from classify's JSON Lines.


@dataclass(frozen=True, eq=False)
class ServedWindow:
    """What a head answered in production: one entry per decided crop."""

    labels: tuple[str, ...]  # top-1 class per crop
    confidence: np.ndarray  # (N,) calibrated top-1 probability
    ood_scores: np.ndarray | None = None  # (N,) OOD score, None when the head has none
    skipped: int = 0  # rows that were errors or skips: counted, not compared
    source: str = "served window"  # where it came from, for messages
    versions: tuple[str, ...] = ()  # head versions that answered, when known
    notes: tuple[str, ...] = ()  # what could not be checked about the window (e.g. rows without a version)

    def __post_init__(self) -> None:
        if len(self.confidence) != len(self.labels) or (
                self.ood_scores is not None and len(self.ood_scores) != len(self.labels)):
            raise DriftError(f"{self.source}: {len(self.labels)} labels, {len(self.confidence)} confidences and "
                             f"{'no' if self.ood_scores is None else len(self.ood_scores)} OOD scores; "
                             "every crop needs each")

    def __len__(self) -> int:
        return len(self.labels)


class RollingWindow:
    """The last ``capacity`` decided crops of every head, kept by the client as an ``Observer``.

    Bounded (a deque per head), thread-safe (one lock; each batch is appended at once), and cheap: a tuple
    per crop. ``window(head)`` is a snapshot to ``compare`` while the client keeps serving.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise DriftError(f"RollingWindow capacity={capacity}; it must keep at least one crop")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._crops: dict[str, collections.deque[tuple[str, float, float | None, str]]] = {}
        self._errors: collections.Counter[str] = collections.Counter()

    def observe_batch(self, info: HeadInfo, predictions: Sequence[Prediction], seconds: float) -> None:
        try:
            rows = [(p.label, p.confidence, p.ood_score, info.version) for p in predictions]
        except AttributeError as exc:  # the Observer protocol: never fail the caller's request for the window
            log.warning("rolling window could not record a batch of head %r: %s", info.name, exc)
            return
        with self._lock:
            store = self._crops.get(info.name)
            if store is None:
                store = self._crops[info.name] = collections.deque(maxlen=self.capacity)
            store.extend(rows)

    def observe_error(self, head: str, error: BaseException) -> None:
        with self._lock:
            self._errors[head] += 1

    def heads(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._crops)

    def window(self, head: str, version: str | None = None) -> ServedWindow:
        """A snapshot of ``head``'s last crops (of ``version`` only, when given); its failed requests are
        counted in ``skipped``.

        A window that spans a hot swap holds answers of two heads under one name; compared with one
        artifact's reference it would blame (or hide) drift on the swap. Such a window is refused unless
        ``version`` picks one.
        """
        with self._lock:
            rows = list(self._crops.get(head, ()))
            errors = self._errors[head]
        if not rows:
            seen = ", ".join(self._crops) or "none"
            raise DriftError(f"the rolling window holds no crops of head {head!r} (heads seen: {seen}); "
                             "classify with this window as the client's observer first")
        versions = sorted({r[3] for r in rows})
        if version is not None:
            rows = [r for r in rows if r[3] == version]
            if not rows:
                raise DriftError(f"the rolling window holds no crops of head {head!r} version {version!r} "
                                 f"(versions seen: {', '.join(versions)})")
        elif len(versions) > 1:
            raise DriftError(f"the rolling window of head {head!r} spans versions {', '.join(versions)} (a hot "
                             "swap); pass version= the one whose artifact you compare against")
        scores = [r[2] for r in rows]
        return ServedWindow(labels=tuple(r[0] for r in rows), confidence=np.array([r[1] for r in rows]),
                            ood_scores=None if any(s is None for s in scores) else np.array(scores, np.float64),
                            skipped=errors, source=f"rolling window of {head!r}",
                            versions=tuple(sorted({r[3] for r in rows})))


def read_window(path: str | Path, version: str | None = None) -> ServedWindow:
    """The window in a ``headserve classify --output`` file (JSON Lines of ``Prediction.to_json`` rows).

    Rows without a label (errors, skips) are counted in ``skipped``. A line that is not JSON is an error
    naming file:line; so is a file whose rows carry OOD scores only in part (two heads in one file).

    Every row names the head version that answered it. A file that spans a hot swap (a long run, or one
    completed with ``--resume`` after the swap) holds the answers of two heads under one name, and held
    against one artifact's reference it would call the swap drift; it is refused unless ``version`` picks
    the version whose artifact is compared, as ``RollingWindow.window`` does. Files written before rows
    carried a version are read as they were, with a note saying their version could not be checked.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise DriftError(f"served window {path} cannot be read ({why or exc}); pass the JSON Lines file "
                         "of served answers that classify wrote") from None
    rows: list[tuple[str, float, float | None, str]] = []  # (label, confidence, ood score, version) per decided row
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DriftError(f"{path}:{number}: not a JSON line; pass the JSON Lines file of served answers "
                             "that classify wrote (its .partial twin may end in a cut line: resume that run to "
                             "finish it)") from None
        if not isinstance(row, dict) or "error" in row or "label" not in row or "confidence" not in row:
            skipped += 1
            continue
        try:
            rows.append((str(row["label"]), float(row["confidence"]),
                         None if row.get("ood_score") is None else float(row["ood_score"]),
                         str(row.get("version") or "")))
        except (TypeError, ValueError):  # a number field holding text, a list, an object
            raise DriftError(f"{path}:{number}: confidence {row['confidence']!r} or ood_score "
                             f"{row.get('ood_score')!r} is not a number; pass the JSON Lines file of served "
                             "answers that classify wrote") from None
    rows, notes = _one_version(rows, version, path)
    scores = [r[2] for r in rows]
    have = [s is not None for s in scores]
    if any(have) and not all(have):
        first = have.index(False) if have[0] else have.index(True)
        raise DriftError(f"{path}: some rows carry an ood_score and some do not (first differing decided row "
                         f"{first + 1}); one file must hold the answers of one head")
    return ServedWindow(labels=tuple(r[0] for r in rows), confidence=np.array([r[1] for r in rows], np.float64),
                        ood_scores=np.array(scores, np.float64) if rows and all(have) else None,
                        skipped=skipped, source=str(path), versions=tuple(sorted({r[3] for r in rows} - {""})),
                        notes=notes)


def _one_version(rows: list[tuple[str, float, float | None, str]], version: str | None,
                 path: Path) -> tuple[list[tuple[str, float, float | None, str]], tuple[str, ...]]:
    """The decided rows of one head version, and notes on what could not be checked; refuses a mixed file."""
    unversioned = sum(1 for r in rows if not r[3])
    versions = sorted({r[3] for r in rows} - {""}, key=lambda v: (len(v), v))  # numeric order for Triton's versions
    if version is not None:
        if not versions:
            raise DriftError(f"{path} records no head version (written before `headserve classify` recorded one), "
                             f"so version {version!r} cannot be picked from it; drop `version`, or classify again")
        kept = [r for r in rows if r[3] == version]
        if not kept:
            raise DriftError(f"{path} holds no answers of head version {version!r} (versions in it: "
                             f"{', '.join(versions)}); pass one of those as `version`")
        notes = (f"compared the {len(kept)} answers of head version {version}; left out "
                 f"{len(rows) - len(kept)} of other versions" + (f" ({unversioned} recording none)" if unversioned
                                                                  else ""),) if len(kept) < len(rows) else ()
        return kept, notes
    if len(versions) > 1 or (versions and unversioned):
        spans = ", ".join(versions) + (f" and {unversioned} rows recording no version" if unversioned else "")
        raise DriftError(f"{path} holds answers of head versions {spans} (a hot swap during the run, or a run "
                         "resumed after one); held against one artifact's reference, the swap "
                         "would read as drift. Pass `version` N, the served version of the artifact you compare")
    if unversioned:
        return rows, ("the rows record no head version (written before `headserve classify` recorded one): "
                      "the window is taken as one version's answers, which could not be checked",)
    return rows, ()


# ---------------------------------------------------------------------------------------------
# The statistics, written out (numpy only).


def psi(reference_counts: Sequence[float], window_counts: Sequence[float]) -> float:
    """Population stability index sum((w - r) * ln(w / r)) over bins, after PSEUDO_COUNT smoothing."""
    r = np.asarray(reference_counts, np.float64) + PSEUDO_COUNT
    w = np.asarray(window_counts, np.float64) + PSEUDO_COUNT
    r, w = r / r.sum(), w / w.sum()
    return float(np.sum((w - r) * np.log(w / r)))


def binomial_upper_p(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of seeing k or more flags among n crops."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    # ln pmf(k) exactly, then the ratio pmf(j+1) / pmf(j) = (n - j) / (j + 1) * p / (1 - p) as a running sum
    first = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    j = np.arange(k, n, dtype=np.float64)
    log_pmf = first + np.concatenate([[0.0], np.cumsum(np.log(n - j) - np.log(j + 1) + math.log(p) - math.log1p(-p))])
    top = float(log_pmf.max())
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def beta_binomial_upper_p(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b): k or more flags among n crops when the flag rate itself is
    only known as Beta(a, b), i.e. measured on a validation split of limited size."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    # ln pmf(k) exactly, then pmf(j+1) / pmf(j) = (n - j) / (j + 1) * (j + a) / (n - j - 1 + b) as a running sum
    first = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + math.lgamma(k + a)
             + math.lgamma(n - k + b) - math.lgamma(n + a + b) - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b))
    j = np.arange(k, n, dtype=np.float64)
    log_pmf = first + np.concatenate([[0.0], np.cumsum(np.log(n - j) - np.log(j + 1) + np.log(j + a)
                                                       - np.log(n - j - 1 + b))])
    top = float(log_pmf.max())
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: the statistic D = max |F_a - F_b| and its asymptotic two-sided p-value.

    The p-value is Kolmogorov's limit distribution at sqrt(n m / (n + m)) * D (scipy's ``kstwobign``);
    windows here hold hundreds of crops or more, where the limit is within a few percent of the exact law.
    """
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    both = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, both, side="right") / len(a)
                            - np.searchsorted(b, both, side="right") / len(b))))
    z = math.sqrt(len(a) * len(b) / (len(a) + len(b))) * d
    return d, kolmogorov_sf(z)


def kolmogorov_sf(z: float) -> float:
    """P(K > z) for Kolmogorov's distribution: 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 z^2)."""
    if z < 0.2:  # the series converges slowly here and the answer is 1 to 1e-9
        return 1.0
    j = np.arange(1, 101, dtype=np.float64)
    return float(min(1.0, max(0.0, 2.0 * np.sum((-1.0) ** (j - 1) * np.exp(-2.0 * j * j * z * z)))))


# ---------------------------------------------------------------------------------------------
# The comparison.


@dataclass(frozen=True)
class DriftThresholds:
    """When a check fails. The defaults follow the conventions of the field; a user sets their own."""

    # PSI < 0.1: no real change; 0.1-0.25: moderate, watch; > 0.25: a significant shift (the credit-scoring
    # convention PSI comes from). Fail at 0.25: a same-distribution window of 100 crops over 10 classes already
    # scores about 0.1 from sampling noise alone.
    class_psi: float = 0.25
    confidence_psi: float = 0.25
    # p-values below 0.01: a 1-in-100 false alarm per check and run, tolerable for a daily cron job.
    ood_rate_p_value: float = 0.01
    # ...and only when the rate is also this many times the expected one: the threshold is a quantile of a few
    # hundred validation crops, itself uncertain by a percent or so; a million crops would make 5.2% vs 5%
    # "significant" without anything having drifted.
    ood_rate_ratio: float = 1.5
    ks_p_value: float = 0.01
    # KS distance below 0.1 (the CDFs never differ by ten points) is not worth an alarm, however many crops.
    ks_statistic: float = 0.1
    # Below 100 crops, PSI's own noise reaches the 0.1 warning level: refuse rather than guess.
    min_window: int = 100

    def __post_init__(self) -> None:
        for name in ("class_psi", "confidence_psi", "ks_statistic"):
            if getattr(self, name) <= 0:
                raise DriftConfigError(f"drift threshold {name}={getattr(self, name)} must be positive").about(
                    name, getattr(self, name))
        for name in ("ood_rate_p_value", "ks_p_value"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise DriftConfigError(f"drift threshold {name}={getattr(self, name)} must be a p-value in "
                                       "(0, 1)").about(name, getattr(self, name))
        if self.ood_rate_ratio < 1.0:
            raise DriftConfigError(f"drift threshold ood_rate_ratio={self.ood_rate_ratio} must be at least 1").about(
                "ood_rate_ratio", self.ood_rate_ratio)
        if self.min_window < 1:
            raise DriftConfigError(f"drift threshold min_window={self.min_window} must be at least 1").about(
                "min_window", self.min_window)


@dataclass(frozen=True)
class Check:
    """One check's verdict: ``value`` against ``threshold`` (PSI above fails; a p-value below fails)."""

    name: str  # class_psi, confidence_psi, ood_rate, ood_scores_ks
    value: float  # the PSI, or the p-value of the test
    threshold: float  # the limit ``value`` was held against
    passed: bool  # True: no drift by this check
    detail: str  # the numbers behind the verdict, for a person


@dataclass(frozen=True)
class DriftResult:
    """Every check run on a window; ``drifted`` when any failed."""

    checks: tuple[Check, ...]  # in the order they ran
    window_size: int  # decided crops compared
    skipped: int  # rows of the window that were errors or skips
    source: str  # where the window came from
    notes: tuple[str, ...] = ()  # checks not run, and why
    window_class_counts: Mapping[str, int] = field(default_factory=dict)  # for the report's plots
    window_confidence: Histogram | None = None  # the window on the reference's confidence bins
    window_ood: Histogram | None = None  # the window on the reference's OOD bins
    versions: tuple[str, ...] = ()  # served head versions whose answers were compared; () when not recorded

    @property
    def drifted(self) -> bool:
        return any(not c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; ran {', '.join(c.name for c in self.checks)}")

    def to_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "window_size": self.window_size, "skipped": self.skipped,
                "source": self.source, "versions": list(self.versions), "notes": list(self.notes),
                "checks": [{"name": c.name, "value": c.value, "threshold": c.threshold, "passed": c.passed,
                            "detail": c.detail} for c in self.checks]}


def compare(reference: DriftReference, window: ServedWindow,
            thresholds: DriftThresholds = DriftThresholds()) -> DriftResult:
    """Hold ``window`` against ``reference``; every check that can run, runs."""
    n = len(window)
    if n == 0:
        raise DriftError(f"{window.source} holds no decided crops ({window.skipped} rows were errors or skips); "
                         "nothing to compare")
    if n < thresholds.min_window:
        raise DriftError(f"{window.source} holds {n} decided crops, fewer than min_window="
                         f"{thresholds.min_window}; collect more, or lower min_window knowing PSI gets noisy")
    index = {c: i for i, c in enumerate(reference.classes)}
    unknown = sorted({label for label in window.labels if label not in index})
    if unknown:
        raise DriftError(f"{window.source} has labels {', '.join(map(repr, unknown[:5]))} that are not classes of "
                         f"the reference ({', '.join(reference.classes)}); compare a head's window with that "
                         "head's own reference")
    counts = np.bincount([index[label] for label in window.labels], minlength=len(reference.classes))
    checks = [_psi_check("class_psi", reference.class_counts, counts, thresholds.class_psi, "top-1 class mix")]
    confidence = Histogram.of(window.confidence, reference.confidence.edges)
    checks.append(_psi_check("confidence_psi", reference.confidence.counts, confidence.counts,
                             thresholds.confidence_psi, "top-1 confidence"))
    notes: list[str] = list(window.notes)
    window_ood = None
    if reference.ood is None:
        notes.append("the reference has no OOD scores (a head without an OOD model): OOD checks not run")
    elif window.ood_scores is None:
        raise DriftError(f"{window.source} carries no OOD scores but the reference has them; serve the head with "
                         "its ood_score output (re-export it) so its window can be checked")
    else:
        window_ood = Histogram.of(window.ood_scores, reference.ood.edges)
        if reference.ood_threshold is not None and (reference.validation_ood_rate is not None
                                                    or reference.expected_ood_rate is not None):
            checks.append(_ood_rate_check(reference, window.ood_scores, thresholds))
        else:
            notes.append("the reference has no OOD threshold or quantile: the OOD-rate check not run")
        if reference.ood_sample:
            checks.append(_ks_check(np.asarray(reference.ood_sample), window.ood_scores, thresholds))
    return DriftResult(checks=tuple(checks), window_size=n, skipped=window.skipped, source=window.source,
                       notes=tuple(notes),
                       window_class_counts={c: int(k) for c, k in zip(reference.classes, counts)},
                       window_confidence=confidence, window_ood=window_ood, versions=window.versions)


def _psi_check(name: str, reference: Iterable[int], window: Iterable[int], limit: float, what: str) -> Check:
    value = psi(list(reference), list(window))
    return Check(name, value, limit, value < limit, f"PSI of the {what}: {value:.4f} (fails at {limit:g})")


def _ood_rate_check(reference: DriftReference, scores: np.ndarray, thresholds: DriftThresholds) -> Check:
    """Flags in the window against the rate on validation crops.

    The threshold is a quantile of a validation split that may hold only a few hundred crops (tens, for a
    small dataset), so the rate it flags on new crops like them is uncertain: 1 - quantile is its design
    value, not a fact. Where the reference measured its own rate (``validation_ood_rate`` over ``n`` crops),
    that rate is taken as Beta(flagged + 0.5, n - flagged + 0.5) (Jeffreys) and the window's count is tested
    against the beta-binomial it implies; otherwise against a plain binomial at 1 - quantile.
    """
    assert reference.ood_threshold is not None
    flagged = int(np.sum(scores > reference.ood_threshold))
    rate = flagged / len(scores)
    if reference.validation_ood_rate is not None:
        seen = reference.validation_ood_rate * reference.n  # validation crops above the threshold
        a, b = seen + 0.5, reference.n - seen + 0.5
        expected = a / (a + b)
        p_value = beta_binomial_upper_p(flagged, len(scores), a, b)
        basis = f"validation's {reference.validation_ood_rate:.2%} of {reference.n} crops, beta-binomial"
    else:
        assert reference.expected_ood_rate is not None
        expected = reference.expected_ood_rate
        p_value = binomial_upper_p(flagged, len(scores), expected)
        basis = f"1 - quantile {reference.ood_quantile:g}, binomial"
    passed = p_value >= thresholds.ood_rate_p_value or rate < thresholds.ood_rate_ratio * expected
    return Check("ood_rate", p_value, thresholds.ood_rate_p_value, passed,
                 f"{flagged} of {len(scores)} crops ({rate:.2%}) above the OOD threshold "
                 f"{reference.ood_threshold:.4g}, expected {expected:.2%} ({basis}); one-sided p={p_value:.3g} "
                 f"(fails below {thresholds.ood_rate_p_value:g} with a rate over "
                 f"{thresholds.ood_rate_ratio:g}x expected)")


def _ks_check(reference: np.ndarray, scores: np.ndarray, thresholds: DriftThresholds) -> Check:
    d, p_value = ks_2samp(reference, scores)
    passed = p_value >= thresholds.ks_p_value or d < thresholds.ks_statistic
    return Check("ood_scores_ks", p_value, thresholds.ks_p_value, passed,
                 f"two-sample KS of OOD scores: D={d:.3f}, p={p_value:.3g} against {len(reference)} validation "
                 f"scores (fails below {thresholds.ks_p_value:g} with D of {thresholds.ks_statistic:g} or more)")


def reference_of(meta: HeadMeta) -> DriftReference:
    """The reference a head's artifact keeps (meta.json ``extra.drift_reference``, written by training), with the
    OOD threshold and quantile meta.json stores beside it."""
    data = meta.extra.get("drift_reference")
    if data is None:
        raise DriftError(f"head {meta.name!r} keeps no drift reference in its meta.json: it was trained before "
                         "headserve kept one; retrain it (the cached embeddings make that quick) to compare windows")
    reference = DriftReference.from_dict(data, origin=f"head {meta.name!r} meta.json drift_reference")
    try:
        return replace(reference, ood_threshold=meta.ood_threshold, ood_quantile=meta.ood_quantile)
    except DriftError as exc:
        raise DriftError(f"head {meta.name!r} meta.json: {exc}") from None
