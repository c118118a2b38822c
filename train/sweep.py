"""`headserve sweep`: profiles x encoders x MLP sizes x label smoothing on shared cached embeddings.

Each encoder embeds the dataset once (through the on-disk cache); every head of the grid then fits on
the same embeddings and the same grouped split, so differences come from the recipe alone. Each
row is trained with every seed of ``seeds`` and reports the seed mean (± sd); it is compared with
the tuned baseline of its encoder (scikit-learn StandardScaler + LogisticRegression, C and class
weighting chosen on the same validation split, ``headserve.train.selection``) by a paired
bootstrap 95% interval over the test crops, and written as a tie where that interval spans zero.
``select`` adds the row that ``headserve train --select`` would train. The output keeps the table
format of the earlier sweep reports (profile averages, best per backbone and profile, each
profile's delta against ``full``), adds the comparison with the baseline, and writes runs.csv.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from headserve.contract import PROBS
from headserve.encoders import get_encoder
from headserve.errors import ConfigError
from headserve.fsutil import write_text_atomic
from headserve.train.embed import EmbedConfig
from headserve.train.errors import UnknownProfileError
from headserve.train.evaluation import comparison, macro_f1_fg, paired_f1_difference
from headserve.train.pipeline import PreparedData, TrainOutcome, TrainRequest, prepare, train_from_yolo
from headserve.train.profiles import PROFILES, profile_config
from headserve.train.selection import select_head, tune_logreg

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
    seeds: tuple[int, ...] = (42, 43, 44)  # training seeds of every row: the table shows their mean ± sd
    select: bool = False  # add per encoder the head `train --select` chooses (first profile, first seed)
    embed: EmbedConfig = field(default_factory=EmbedConfig)  # engine, device and precision of the embeddings
    embeddings: tuple[Path, ...] = ()  # embeddings stores, one per encoder in order, instead of the images; (): none

    def __post_init__(self) -> None:
        unknown = [p for p in self.profiles if p not in PROFILES]
        if unknown:
            raise UnknownProfileError(f"sweep profiles {unknown} are not among {', '.join(PROFILES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"sweep seeds {self.seeds} must be distinct and at least one (three for a sd)").about(
                "seeds", self.seeds)
        if self.embeddings and len(self.embeddings) != len(self.encoders):
            raise ConfigError(f"{len(self.embeddings)} embeddings store(s) for {len(self.encoders)} encoder(s) "
                              f"{', '.join(self.encoders)}; pass one store per encoder, in the same order")


def _fmt(v: float) -> str:
    return str(v).replace(".", "p")


def run_name(dataset: str, encoder: str, hidden: tuple[int, ...], ls: float, profile: str, bg: int) -> str:
    """The earlier reports' run name, e.g. digits_dinov3_vitl16_mlp1024_512_mix0p1_balnorm_ls0p1_full_bg5."""
    head = "mlp" + "_".join(map(str, hidden)) if hidden else "logreg"
    return f"{dataset}_{encoder.replace(':', '_')}_{head}_mix0p1_balnorm_ls{_fmt(ls)}_{profile}_bg{bg}"


def _seed_out(out: Path, seed: int, first: int) -> Path:
    """The first seed's head keeps the run's name; the others sit beside it as NAME.seedN."""
    return out if seed == first else out.with_name(f"{out.name}.seed{seed}")


def _row(name: str, enc: str, profile: str, hidden: tuple[int, ...], ls: float, outcomes: list[TrainOutcome],
         prepared: PreparedData, baseline_pred: np.ndarray) -> dict[str, object]:
    """One table row: seed means of the metrics, their sd, and the paired interval against the baseline."""
    labels = prepared.labels[prepared.test_idx]
    n_cls = len(prepared.classes)
    fg = [c for c in range(n_cls) if c not in set(prepared.background)]
    preds = [o.test_outputs[PROBS].argmax(1) for o in outcomes]
    delta = paired_f1_difference(labels, preds, [baseline_pred], fg, n_cls)
    f1 = np.array([float(o.metrics["macro_f1_fg"]) for o in outcomes])
    return {"run": name, "encoder": enc, "profile": profile, "hidden": hidden, "ls": ls,
            **{m: float(np.mean([float(o.metrics[m]) for o in outcomes]))  # type: ignore[arg-type]
               for m in (*METRICS, "ece_before", "ece_after")},
            "fit_s": float(np.mean([o.timings["fit"] for o in outcomes])),
            "macro_f1_fg_sd": float(f1.std()), "seeds": len(outcomes), "delta_vs_baseline": delta.value,
            "delta_low": delta.low, "delta_high": delta.high, "verdict": comparison(delta)}


def run_sweep(config: SweepConfig) -> Path:
    """Train the grid; write runs.csv, baselines.csv and sweep.md under ``config.out``; returns sweep.md's path."""
    rows: list[dict[str, object]] = []
    baselines: list[dict[str, object]] = []
    first = config.seeds[0]
    for n, enc in enumerate(config.encoders):
        base_req = TrainRequest(dataset=config.dataset, encoder=get_encoder(enc), out=config.out / "heads" / "_",
                                bg_classes=config.bg_classes, cache_dir=config.cache_dir, embed=config.embed,
                                embeddings=config.embeddings[n] if config.embeddings else None)
        prepared = prepare(base_req)
        fit, val, test = prepared.fit_idx, prepared.val_idx, prepared.test_idx
        n_cls, labels = len(prepared.classes), prepared.labels
        tuned = tune_logreg(prepared.emb[fit], labels[fit], prepared.emb[val], labels[val], n_cls, prepared.background)
        baseline_pred = tuned.predict_proba(prepared.emb[test]).argmax(1)
        fg = [c for c in range(n_cls) if c not in set(prepared.background)]
        baselines.append({"encoder": enc, "macro_f1_fg": macro_f1_fg(baseline_pred, labels[test], fg, n_cls),
                          "C": tuned.chosen.params["C"], "class_weight": tuned.chosen.params["class_weight"] or "none",
                          "val_macro_f1_fg": tuned.chosen.val_macro_f1_fg})
        for profile, hidden, ls in itertools.product(config.profiles, config.hidden, config.label_smoothing):
            overrides = {"label_smoothing": ls, **({"epochs": config.epochs} if config.epochs else {})}
            name = run_name(config.dataset.name, enc, hidden, ls, profile, config.bg_classes)
            outcomes = []
            for seed in config.seeds:
                req = TrainRequest(dataset=config.dataset, encoder=get_encoder(enc),
                                   out=_seed_out(config.out / "heads" / name, seed, first), name="h", hidden=hidden,
                                   bg_classes=config.bg_classes, profile=profile, embed=config.embed,
                                   train=profile_config(profile, **overrides, seed=seed))
                outcomes.append(train_from_yolo(req, prepared))
            rows.append(_row(name, enc, profile, hidden, ls, outcomes, prepared, baseline_pred))
        if config.select:
            profile = config.profiles[0]
            name = f"{config.dataset.name}_{enc.replace(':', '_')}_selected_{profile}_bg{config.bg_classes}"
            # chosen once with the first seed, as `train --select` does; the other seeds retrain the choice
            base = profile_config(profile, seed=first, **({"epochs": config.epochs} if config.epochs else {}))
            sel = select_head(prepared.emb[fit], labels[fit], prepared.emb[val], labels[val], n_cls, base,
                              prepared.background)
            outcomes = []
            for seed in config.seeds:
                req = TrainRequest(dataset=config.dataset, encoder=get_encoder(enc),
                                   out=_seed_out(config.out / "heads" / name, seed, first), name="h",
                                   hidden=sel.hidden, bg_classes=config.bg_classes, profile=profile,
                                   embed=config.embed, train=replace(sel.config, seed=seed),
                                   selection=sel.describe())
                outcomes.append(train_from_yolo(req, prepared))
            rows.append(_row(name, enc, "selected", (), -1.0, outcomes, prepared, baseline_pred))
    config.out.mkdir(parents=True, exist_ok=True)
    with (config.out / "baselines.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(baselines[0]))
        writer.writeheader()
        writer.writerows(baselines)
    with (config.out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [*sweep_table(rows), "", *baseline_table(rows, baselines, config.seeds)]
    return write_text_atomic(config.out / "sweep.md", "\n".join(lines) + "\n")


def baseline_table(rows: list[dict[str, object]], baselines: list[dict[str, object]],
                   seeds: tuple[int, ...]) -> list[str]:
    """Every row against its encoder's tuned baseline: seed mean ± sd and the paired 95% interval."""
    lines = ["Tuned baseline per encoder (scikit-learn StandardScaler + LogisticRegression on the fit split; C in "
             "0.01..1000 x class_weight None/balanced chosen by validation macro F1 fg):", ""]
    lines += [f"- {b['encoder']}: macro_f1_fg {float(b['macro_f1_fg']):.4f} (C={b['C']}, class_weight="  # type: ignore[arg-type]
              f"{b['class_weight']})" for b in baselines]
    lines += ["", f"Each run vs the tuned baseline (macro_f1_fg mean ± sd over seeds {list(seeds)}; delta with paired "
              "bootstrap 95% interval over test crops; a tie where the interval spans zero):", "",
              "| run | macro_f1_fg | delta vs baseline [95%] | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {float(r['macro_f1_fg']):.4f} ± {float(r['macro_f1_fg_sd']):.4f} | "  # type: ignore[arg-type]
                     f"{float(r['delta_vs_baseline']):+.4f} [{float(r['delta_low']):+.4f}, "  # type: ignore[arg-type]
                     f"{float(r['delta_high']):+.4f}] | {r['verdict']} |")  # type: ignore[arg-type]
    return lines


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
