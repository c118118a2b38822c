"""`headserve train` and `headserve sweep`: flags to TrainRequest and SweepConfig."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from headserve.app.arguments import (
    add_device_args,
    add_encoder_args,
    add_later,
    embed_config_from_args,
    encoder_from_args,
    parse_hidden,
)

DEFAULT_PROFILE = "full"  # the recipe profile `train` uses without --profile
PROFILE_HELP = "recipe profile: base, center_std, effective, hardmine, gelu_ln, calib, full, logit_train, " \
               "logit_infer, logit_both, arcface, supcon, feataug, center, crt"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig knob (--label-smoothing, --arcface-margin, ...), overriding the profile.

    Each help names the value the default profile sets, since a profile always applies (torch-free: fast help).
    """
    from headserve.train.config import TrainConfig
    from headserve.train.profiles import profile_config

    preset = profile_config(DEFAULT_PROFILE)
    group = p.add_argument_group("recipe knobs", f"each overrides the value --profile sets (shown for the default "
                                                 f"profile, {DEFAULT_PROFILE})")
    for f in fields(TrainConfig):
        default = f.default
        kind = _bool if isinstance(default, bool) else type(default)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"knob_{f.name}", default=None, type=kind,
                           metavar=type(default).__name__.upper(),
                           help=f"{f.metadata['help']} (default: from --profile; {DEFAULT_PROFILE}: "
                                f"{getattr(preset, f.name)!r})")


def _name_of(dataset: Path) -> str:
    """A served model name from the dataset folder's name: characters Triton model names may not hold become _."""
    from headserve.contract import MULTI_HEAD_SEPARATOR

    name = re.sub(r"[^A-Za-z0-9_-]+", "_", dataset.resolve().name).strip("_-")
    name = re.sub(f"{MULTI_HEAD_SEPARATOR}+", "_", name)  # a multi-head ensemble's separator is never in a name
    return name or "head"


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("knob_"):]: v for k, v in vars(args).items() if k.startswith("knob_") and v is not None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a calibrated head on a YOLO dataset")
    p.add_argument("dataset", type=Path, nargs="?", default=None,
                   help="YOLO dataset root (images/, labels/, data.yaml); a data.yaml naming train: and val: folders "
                        "sets the split (val: is the test split); optional with --embeddings")
    p.add_argument("--embeddings", type=Path, default=None, metavar="EMB",
                   help="train from an embeddings store written by `headserve embed` instead of the images: no image "
                        "is opened; --encoder, --engine and --precision must be the store's")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--name", default=None,
                   help="head name; becomes the served model name, so two heads need two names (default: the "
                        "dataset folder's name, made a valid model name, and printed)")
    add_encoder_args(p)
    add_device_args(p)
    p.add_argument("--hidden", type=parse_hidden, default=(256,),
                   help="MLP widths, e.g. 768,384; 'logreg' for none (default 256)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=PROFILE_HELP + f" (default {DEFAULT_PROFILE})")
    p.add_argument("--bg", type=int, default=1, metavar="N",
                   help="N background classes of random crops overlapping no box, split by k-means (default 1)")
    p.add_argument("--no-background", action="store_true", help="do not add background classes")
    p.add_argument("--strict", action="store_true", help="bad label lines are errors instead of skips")
    p.add_argument("--reject-outside", action="store_true",
                   help="skip label lines with coordinates outside [0, 1] instead of clipping them")
    p.add_argument("--cache", type=Path, default=Path(".headserve-cache"),
                   help="embedding cache directory (default %(default)s)")
    p.add_argument("--report", type=Path, default=None, help="report directory (default OUT.report)")
    p.add_argument("--ood-holdout", default=None, metavar="CLASS", help="leave CLASS out and report OOD AUROC on it")
    p.add_argument("--select", action="store_true",
                   help="choose --hidden, --weight-decay and --label-smoothing on the validation split (foreground "
                        "macro F1, early stopping in each fit) from the grid hidden {logreg, 256, 512,256} x weight "
                        "decay {1e-4, 1e-2} x label smoothing {0, 0.1} on top of the profile; the grid, every "
                        "score and the choice go into meta.json and the report")
    add_later(p, _add_recipe_args)  # only when `train` is parsed: the other commands never read the profiles
    p.set_defaults(func=_train)

    s = sub.add_parser("sweep", help="train profiles x encoders x MLP sizes x label smoothing on cached embeddings")
    s.add_argument("dataset", type=Path, help="YOLO dataset root")
    s.add_argument("--out", type=Path, required=True, help="directory for the sweep table and per-run metrics")
    s.add_argument("--profiles", type=_csv, default=["base", "full"], help="comma-separated profile names (default base,full)")
    s.add_argument("--encoders", type=_csv, default=["clip:tiny", "dinov3:tiny"],
                   help="comma-separated encoders (default clip:tiny,dinov3:tiny: untrained twins)")
    s.add_argument("--hidden", type=lambda t: [parse_hidden(h) for h in t.split(";")], default=[(256,)],
                   help="';'-separated MLP sizes, e.g. '768,384;1024,512;logreg' (default 256)")
    s.add_argument("--label-smoothing", type=lambda t: [float(v) for v in t.split(",")], default=[0.0, 0.1],
                   help="comma-separated label smoothing values (default 0,0.1)")
    s.add_argument("--epochs", type=int, default=None, help="override the maximum number of epochs (default: the profile's)")
    s.add_argument("--bg", type=int, default=1, metavar="N", help="background classes (default 1)")
    s.add_argument("--cache", type=Path, default=Path(".headserve-cache"),
                   help="embedding cache directory (default %(default)s)")
    s.add_argument("--embeddings", type=lambda t: tuple(Path(v) for v in _csv(t)), default=(), metavar="EMB[,EMB]",
                   help="embeddings stores (`headserve embed`), one per --encoders entry in order, instead of the images")
    s.add_argument("--seeds", type=lambda t: tuple(int(v) for v in t.split(",")), default=(42, 43, 44),
                   help="comma-separated training seeds of every row (default 42,43,44; at least 3 for the ± sd)")
    s.add_argument("--select", action="store_true",
                   help="add a row per encoder for the head that `train --select` would choose")
    add_device_args(s)
    s.set_defaults(func=_sweep)


def _train(args: argparse.Namespace) -> int:
    from headserve.encoders import UNTRAINED_NOTE
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.profiles import profile_config

    overrides = _recipe_overrides(args)
    args.dataset = _dataset_of(args)
    name = args.name or _name_of(args.dataset)
    encoder = encoder_from_args(args)
    if args.name is None:
        print(f"head name: {name} (the dataset folder's name; pass --name to choose another)")
    if encoder.is_tiny:
        print(f"encoder: {encoder.name}, the default tiny twin: {UNTRAINED_NOTE}; pass --encoder to train on a "
              "real one, e.g. clip:ViT-B-32")
    req = TrainRequest(dataset=args.dataset, encoder=encoder, out=args.out, name=name,
                       hidden=args.hidden, background=not args.no_background, bg_classes=args.bg,
                       strict=args.strict, reject_outside=args.reject_outside,
                       train=profile_config(args.profile, **overrides),
                       embed=embed_config_from_args(args), profile=args.profile,
                       cache_dir=args.cache, report_dir=args.report or args.out.with_name(args.out.name + ".report"),
                       ood_holdout=args.ood_holdout, progress=True, embeddings=args.embeddings)
    if args.select:
        outcome = _train_selected(req)
    else:
        outcome = train_from_yolo(req)
    summary, *details = outcome.report_lines
    for line in details:
        print(line)
    keep = ("macro_f1_fg", "weighted_f1_fg", "ece_before", "ece_after", "temperature", "ood_auroc", "ood_auroc_all")
    print(json.dumps({k: outcome.metrics[k] for k in keep if k in outcome.metrics}, indent=2))
    print(f"artifact: {outcome.artifact} (head {outcome.meta.name})")
    if outcome.meta.encoder_untrained:
        print(f"note: {UNTRAINED_NOTE}")
    print(summary)  # what was skipped, last so it is not scrolled away
    return 0


def _dataset_of(args: argparse.Namespace) -> Path:
    """DATASET, or with --embeddings the dataset the store was written from (the one DATASET must then be)."""
    from headserve.errors import ConfigError

    if args.embeddings is None:
        if args.dataset is None:
            raise ConfigError("no dataset: pass DATASET (a YOLO dataset root) or --embeddings EMB (a store written by "
                              "headserve embed)")
        return Path(args.dataset)
    from headserve.train.store import Store

    root = Store.open(args.embeddings).root
    if args.dataset is not None and Path(args.dataset).resolve() != root:
        raise ConfigError(f"DATASET {args.dataset} is not the dataset {args.embeddings} was embedded from ({root}); "
                          "leave DATASET out or pass that one")
    return root


def _train_selected(req: Any) -> Any:
    """`train --select`: choose the head on validation from SELECTION_GRID, then train and save it."""
    from dataclasses import replace

    from headserve.train.pipeline import prepare, train_from_yolo
    from headserve.train.selection import select_head

    prepared = prepare(req)
    fit, val = prepared.fit_idx, prepared.val_idx
    sel = select_head(prepared.emb[fit], prepared.labels[fit], prepared.emb[val], prepared.labels[val],
                      len(prepared.classes), req.train, prepared.background)
    print(f"selected on validation: {sel.chosen.params} (validation macro F1 fg {sel.chosen.val_macro_f1_fg:.4f}, "
          f"{len(sel.candidates)} candidates)")
    return train_from_yolo(replace(req, hidden=sel.hidden, train=sel.config, selection=sel.describe()), prepared)


def _sweep(args: argparse.Namespace) -> int:
    from headserve.train.sweep import SweepConfig, run_sweep

    config = SweepConfig(dataset=args.dataset, out=args.out, profiles=tuple(args.profiles),
                         encoders=tuple(args.encoders), hidden=tuple(args.hidden),
                         label_smoothing=tuple(args.label_smoothing), epochs=args.epochs, bg_classes=args.bg,
                         cache_dir=args.cache, seeds=args.seeds, select=args.select, embeddings=args.embeddings,
                         embed=embed_config_from_args(args))
    table = run_sweep(config)
    print(table.read_text())
    return 0
