"""`headserve sweep`: profiles x encoders x MLP sizes x label smoothing on shared cached embeddings.

Each encoder embeds the dataset once (through the on-disk cache); every head of the grid then fits on
the same embeddings and the same grouped split, so differences come from the recipe alone. The
output is the table format of the earlier sweep reports: profile averages, best per backbone and
profile, and each profile's delta against ``full``, plus a CSV of every run.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from headserve.encoders import get_encoder
from headserve.fsutil import write_text_atomic
from headserve.train.pipeline import TrainRequest, prepare, train_from_yolo
from headserve.train.recipe import PROFILES, UnknownProfileError, profile_config

METRICS = ("macro_f1_fg", "weighted_f1_fg", "macro_recall_fg", "macro_precision_fg")


@dataclass(frozen=True)
class SweepConfig:
    """The grid of one sweep."""

    dataset: Path  # YOLO dataset root
    out: Path  # directory for sweep.md, runs.csv and the heads
    profiles: tuple[str, ...] = ("base", "full")  # recipe profiles to compare
    encoders: tuple[str, ...] = ("clip:tiny", "dinov3:tiny")  # registry names
    hidden: tuple[tuple[int, ...], ...] = ((256,),)  # MLP sizes; () is logistic regression
    label_smoothing: tuple[float, ...] = (0.0, 0.1)  # label smoothing values
    epochs: int | None = None  # override each profile's maximum epochs
    bg_classes: int = 1  # background classes (the "bgN" of run names)
    cache_dir: Path | None = None  # embedding cache shared by every run

    def __post_init__(self) -> None:
        unknown = [p for p in self.profiles if p not in PROFILES]
        if unknown:
            raise UnknownProfileError(f"sweep profiles {unknown} are not among {', '.join(PROFILES)}")


def _fmt(v: float) -> str:
    return str(v).replace(".", "p")


def run_name(dataset: str, encoder: str, hidden: tuple[int, ...], ls: float, profile: str, bg: int) -> str:
    """The earlier reports' run name, e.g. digits_dinov3_vitl16_mlp1024_512_mix0p1_balnorm_ls0p1_full_bg5."""
    head = "mlp" + "_".join(map(str, hidden)) if hidden else "logreg"
    return f"{dataset}_{encoder.replace(':', '_')}_{head}_mix0p1_balnorm_ls{_fmt(ls)}_{profile}_bg{bg}"


def run_sweep(config: SweepConfig) -> Path:
    """Train the grid; write runs.csv and sweep.md under ``config.out``; returns sweep.md's path."""
    rows: list[dict[str, object]] = []
    for enc in config.encoders:
        base_req = TrainRequest(dataset=config.dataset, encoder=get_encoder(enc), out=config.out / "heads" / "_",
                                bg_classes=config.bg_classes, cache_dir=config.cache_dir)
        prepared = prepare(base_req)
        for profile, hidden, ls in itertools.product(config.profiles, config.hidden, config.label_smoothing):
            overrides = {"label_smoothing": ls, **({"epochs": config.epochs} if config.epochs else {})}
            name = run_name(config.dataset.name, enc, hidden, ls, profile, config.bg_classes)
            req = TrainRequest(dataset=config.dataset, encoder=get_encoder(enc), out=config.out / "heads" / name,
                               name="h", hidden=hidden, bg_classes=config.bg_classes, profile=profile,
                               train=profile_config(profile, **overrides))
            outcome = train_from_yolo(req, prepared)
            rows.append({"run": name, "encoder": enc, "profile": profile, "hidden": hidden, "ls": ls,
                         **{m: outcome.metrics[m] for m in (*METRICS, "ece_before", "ece_after")},
                         "fit_s": outcome.timings["fit"]})
    config.out.mkdir(parents=True, exist_ok=True)
    with (config.out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return write_text_atomic(config.out / "sweep.md", "\n".join(sweep_table(rows)) + "\n")


def sweep_table(rows: list[dict[str, object]]) -> list[str]:
    """Profile averages, best per backbone/profile and delta vs full, as the earlier reports print them."""
    by_profile: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        by_profile[str(r["profile"])].append(r)
    avg = {p: {m: sum(float(r[m]) for r in rs) / len(rs) for m in METRICS} for p, rs in by_profile.items()}
    best = max(rows, key=lambda r: float(r["macro_f1_fg"]))
    lines = [f"Total runs: {len(rows)}", f"Best overall (macro_f1_fg): {best['run']} -> {float(best['macro_f1_fg']):.4f}",
             "", "Profile Averages (foreground macro metrics)", "",
             f"{'profile':<13} {'count':>5}   " + "  ".join(f"{m:>18}" for m in METRICS)]
    for p, rs in by_profile.items():
        lines.append(f"{p:<13} {len(rs):>5}   " + "  ".join(f"{avg[p][m]:>18.3f}" for m in METRICS))
    if "full" in avg:
        lines += ["", "Delta vs full average (macro_f1_fg):"]
        lines += [f"- {p}: {avg[p]['macro_f1_fg'] - avg['full']['macro_f1_fg']:+.4f} vs full avg"
                  for p in by_profile if p != "full"]
    lines += ["", "Best per backbone/profile (macro_f1_fg):"]
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["encoder"]), str(r["profile"]))].append(r)
    for (enc, p), rs in sorted(groups.items()):
        b = max(rs, key=lambda r: float(r["macro_f1_fg"]))
        lines.append(f"- {enc} / {p}: {float(b['macro_f1_fg']):.4f} ({b['run']})")
    return lines
