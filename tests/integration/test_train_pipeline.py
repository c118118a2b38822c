"""YOLO digits -> cached tiny-encoder embeddings -> every recipe profile -> artifact -> ONNX, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headserve.encoders import get_encoder
from headserve.train.profiles import PROFILES, profile_config

PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def prepared(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    from headserve.train.pipeline import TrainRequest, prepare

    cache = tmp_path_factory.mktemp("cache")
    req = TrainRequest(dataset=digits_dataset, encoder=get_encoder("clip:tiny"), out=Path("unused"), cache_dir=cache)
    return req, prepare(req)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_exported_head_equals_the_trainers_probabilities_for_every_profile(profile: str, prepared, tmp_path: Path):
    import onnxruntime as ort

    from headserve.contract import SCORE_OUTPUTS
    from headserve.export.onnx_export import export_onnx, head_graph_spec
    from headserve.head import load_head
    from headserve.train.pipeline import TrainRequest, train_from_yolo

    req, data = prepared
    hidden = () if profile == "calib" else (32,)  # one logistic-regression head among the MLPs
    outcome = train_from_yolo(TrainRequest(dataset=req.dataset, encoder=req.encoder, out=tmp_path / "art",
                                           hidden=hidden, profile=profile,
                                           train=profile_config(profile, epochs=8, crt_epochs=2 if profile == "crt" else 0)),
                              data)
    meta, head = load_head(outcome.artifact)
    assert meta.extra["profile"] == profile and meta.ood_threshold is not None
    export_onnx(head, head_graph_spec("h", meta.embedding_dim, SCORE_OUTPUTS), tmp_path / "h.onnx")
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    served = session.run(list(SCORE_OUTPUTS), {"embedding": outcome.test_embeddings})
    for name, got in zip(SCORE_OUTPUTS, served):
        assert np.max(np.abs(got - outcome.test_outputs[name])) <= PARITY_ATOL, name


def test_second_run_hits_the_cache_for_every_crop(prepared):
    from headserve.train.pipeline import prepare

    req, _ = prepared
    again = prepare(req)
    assert again.cache.stats.hit_rate == 1.0 and again.cache.stats.misses == 0


def test_train_command_writes_artifact_report_and_background_classes(digits_dataset: Path, tmp_path: Path, capsys):
    from headserve.app.cli import main

    out = tmp_path / "head"
    rc = main(["train", str(digits_dataset), "--out", str(out), "--profile", "full", "--epochs", "5", "--bg", "3",
               "--hidden", "32", "--cache", str(tmp_path / "cache"), "--ood-holdout", "digit_4",
               "--classifier", "arcface", "--arcface-scale", "16", "--arcface-margin", "20", "--calibrate", "false"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"][-3:] == ["background_0", "background_1", "background_2"]
    assert meta["background_indices"] == [4, 5, 6] and "digit_4" not in meta["classes"]
    assert 0.0 <= meta["metrics"]["ood_auroc"] <= 1.0 and 0.0 <= meta["metrics"]["ood_auroc_all"] <= 1.0
    # the OOD share of known objects and that of background crops, apart (the threshold promises ~5% of the first)
    assert 0.0 <= meta["metrics"]["ood_flagged_test_fg"] <= 1.0 and 0.0 <= meta["metrics"]["ood_flagged_test_background"] <= 1.0
    assert "ood_flagged_test" not in meta["metrics"]
    # every recipe knob is a named option that overrides the profile
    assert (meta["head_config"]["classifier"], meta["head_config"]["scale"]) == ("arcface", 16.0)
    assert meta["extra"]["recipe"]["arcface_margin"] == 20.0 and meta["temperature"] == 1.0
    report = tmp_path / "head.report"
    text = (report / "report.md").read_text()
    assert "| macro_f1_fg |" in text and "## Phase timings" in text and "| digit_0 |" in text
    assert "classifier: arcface" in text
    for png in ("confusion.png", "reliability.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "embedding cache:" in printed and "artifact:" in printed
    assert f"head name: {digits_dataset.name} (the dataset folder's name" in printed
    assert "split: no train/val declared in data.yaml, so 20% of the source images are held out" in printed


def test_sweep_writes_profile_averages_best_per_backbone_and_delta_vs_full(digits_dataset: Path, tmp_path: Path):
    from headserve.train.sweep import SweepConfig, run_sweep

    table = run_sweep(SweepConfig(dataset=digits_dataset, out=tmp_path, profiles=("base", "full"),
                                  encoders=("clip:tiny", "dinov3:tiny"), hidden=((16,), ()), label_smoothing=(0.1,),
                                  epochs=3, cache_dir=tmp_path / "cache")).read_text()
    assert "Total runs: 8" in table
    assert "- base: " in table and "vs full avg" in table
    assert "- dinov3:tiny / full: " in table and "_logreg_mix0p1_balnorm_ls0p1_full_bg1" in table
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 9
