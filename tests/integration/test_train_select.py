"""`train --select` and the sweep's comparison with the tuned baseline, on real files end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from headserve.encoders import get_encoder
from headserve.train.selection import SELECTION_GRID


def test_train_select_records_grid_and_choice_and_meta_alone_reproduces_the_head(digits_dataset: Path,
                                                                                  tmp_path: Path, capsys):
    from headserve.app.cli import main
    from headserve.artifact import load_meta, load_tensors
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.trainer import TrainConfig

    out, cache = tmp_path / "head", tmp_path / "cache"
    rc = main(["train", str(digits_dataset), "--out", str(out), "--encoder", "clip:tiny", "--select", "--epochs", "5",
               "--cache", str(cache)])
    assert rc == 0 and "selected on validation:" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    sel = meta["extra"]["selection"]
    assert sel["grid"] == SELECTION_GRID.to_dict()
    assert sel["chosen"] in [c["params"] for c in sel["candidates"]]
    assert sel["val_macro_f1_fg"] == max(c["val_macro_f1_fg"] for c in sel["candidates"])
    assert meta["head_config"]["hidden"] == sel["chosen"]["hidden"]
    assert "reason" in meta["extra"]["calibration"]

    # meta.json alone: the chosen TrainConfig and head shape train the same head again, byte for byte
    loaded = load_meta(out)
    again = train_from_yolo(TrainRequest(dataset=digits_dataset, encoder=get_encoder("clip:tiny"), out=tmp_path / "again",
                                         hidden=tuple(loaded.head_config["hidden"]),
                                         train=TrainConfig(**sel["train_config"]), cache_dir=cache))
    first, second = load_tensors(out), load_tensors(again.artifact)
    assert first.keys() == second.keys()
    assert all(first[k].tobytes() == second[k].tobytes() for k in first)

    report = (tmp_path / "head.report" / "report.md").read_text()
    assert "## Model selection (validation split)" in report and "## Calibration" in report
    assert "| frequent |" in report and "| rare |" in report and "| head |" not in report  # groups, not the classifier
    assert (tmp_path / "head.report" / "reliability_groups.png").read_bytes()[:4] == b"\x89PNG"


def test_linear_head_report_says_how_it_was_fitted(digits_dataset: Path, tmp_path: Path):
    from headserve.app.cli import main

    out = tmp_path / "lin"
    assert main(["train", str(digits_dataset), "--out", str(out), "--encoder", "dinov3:tiny", "--hidden", "logreg",
                 "--cache", str(tmp_path / "cache")]) == 0
    meta = json.loads((out / "meta.json").read_text())
    lin = meta["extra"]["linear_fit"]
    assert meta["head_type"] == "logreg" and set(lin["chosen"]) == {"C", "class_weight"}
    assert "label_smoothing" in lin["recipe_knobs_not_applied"]  # the `full` profile's knob, named as unused
    assert "## Linear head fit" in (tmp_path / "lin.report" / "report.md").read_text()


def test_sweep_compares_every_row_with_the_tuned_baseline_over_three_seeds(digits_dataset: Path, tmp_path: Path):
    from headserve.train.sweep import SweepConfig, run_sweep

    table = run_sweep(SweepConfig(dataset=digits_dataset, out=tmp_path, profiles=("full",), encoders=("clip:tiny",),
                                  hidden=((16,),), label_smoothing=(0.1,), epochs=3, cache_dir=tmp_path / "cache",
                                  select=True)).read_text()
    assert "Tuned baseline per encoder" in table and "- clip:tiny: macro_f1_fg " in table
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [r["profile"] for r in rows] == ["full", "selected"]
    for r in rows:
        assert r["seeds"] == "3" and r["verdict"] in ("tie", "better", "worse")
        low, value, high = float(r["delta_low"]), float(r["delta_vs_baseline"]), float(r["delta_high"])
        assert low <= high and np.isfinite(value)
        assert (r["verdict"] == "tie") == (low <= 0 <= high)
        assert f"| {r['run']} | " in table
    assert (tmp_path / "heads" / f"{rows[0]['run']}.seed43" / "meta.json").is_file()
    baseline = next(csv.DictReader((tmp_path / "baselines.csv").open()))
    assert float(baseline["C"]) in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
