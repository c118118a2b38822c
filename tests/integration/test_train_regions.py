"""`headserve train --pooling region`: every object and background box of an image pooled from one encoder pass,
cached per image, recorded as a region head; `sweep` puts crop and region rows on one split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headserve.backbones import load_encoder, region_graph, region_spec_for
from headserve.encoders import get_encoder
from headserve.preprocess import load_image
from headserve.regions import letterbox_pixels
from headserve.train.cache import EmbeddingCache
from headserve.train.dataset import read_yolo
from headserve.train.embed import EmbedConfig, extract_regions


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the module: the sweep reads the region embeddings the train process wrote."""
    return tmp_path_factory.mktemp("region-cache")


@pytest.fixture(scope="module")
def dinov3_region():
    loaded = load_encoder(get_encoder("dinov3:tiny"))
    spec = region_spec_for(loaded)
    return loaded, region_graph(loaded, spec)


def test_train_pooling_region_as_a_process_writes_a_region_head(digits_dataset: Path, cache_dir: Path, tmp_path: Path):
    script = Path(sys.executable).with_name("headserve")
    out = tmp_path / "head"
    done = subprocess.run([str(script), "train", str(digits_dataset), "--out", str(out), "--encoder", "dinov3:tiny",
                           "--pooling", "region", "--epochs", "5", "--hidden", "32", "--cache", str(cache_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["encoder_region"] == {"resolution": 64, "pooling": "masked-mean", "patch_size": 8,
                                      "pad_value": [124, 116, 104], "interpolation": "bilinear"}
    assert meta["extra"]["embedding"]["mode"] == "region (masked-mean, 64 px, patch 8)"
    assert meta["classes"][-1] == "background" and meta["metrics"]["n_test"] > 0
    assert "(dinov3, region (masked-mean, 64 px, patch 8) mode)" in (tmp_path / "head.report" / "report.md").read_text()
    # one cache entry per image, in a directory of its own: the fingerprint covers the region spec
    entries = list(cache_dir.rglob("*.npy"))
    assert len(entries) == len(read_yolo(digits_dataset).images)
    assert "embedding cache: 0 hit(s), 80 computed" in done.stdout


@pytest.mark.integration
def test_a_trained_region_head_reaches_a_running_serve_through_export_head_and_classify_regions(
        digits_dataset: Path, cache_dir: Path, tmp_path: Path):
    """What a user runs after `train --pooling region`: serve (its default mode), export head (which loads the
    head on that serve), then classify --regions; every box answered with the trained head's classes."""
    from support.serving import Served, headserve_argv

    out = tmp_path / "head"
    trained = subprocess.run(headserve_argv("train", str(digits_dataset), "--out", str(out), "--name", "rgn",
                                            "--encoder", "dinov3:tiny", "--pooling", "region", "--epochs", "3",
                                            "--hidden", "32", "--cache", str(cache_dir)),
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    repo = tmp_path / "repo"
    repo.mkdir()
    served = Served(repo, None, tmp_path / "serve.log")
    try:
        exported = subprocess.run(headserve_argv("export", "head", str(out), "--repo", str(repo)),
                                  capture_output=True, text=True, timeout=300)
        assert exported.returncode == 0, exported.stderr[-2000:]
        rows_file = tmp_path / "rows.jsonl"
        done = subprocess.run(headserve_argv("classify", "--yolo", str(digits_dataset), "--regions", "--head", "rgn",
                                             "--url", served.url, "--output", str(rows_file)),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        served.stop()
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    classes = json.loads((out / "meta.json").read_text())["classes"]
    assert len(rows) == len(read_yolo(digits_dataset).objects)
    assert {r["head"] for r in rows} == {"rgn"} and {r["version"] for r in rows} == {"1"}
    assert all(r["label"] in classes for r in rows)


def test_training_pools_what_the_served_graph_computes_and_a_second_run_reads_the_cache(digits_dataset: Path,
                                                                                         dinov3_region, tmp_path: Path):
    loaded, graph = dinov3_region
    data = read_yolo(digits_dataset)
    objects = [o for o in data.objects if o.image in set(data.images[:3])]
    images, boxes = [o.image for o in objects], [o.box for o in objects]
    cache = EmbeddingCache(tmp_path, "dinov3", "tiny", "sha256:region")
    first = extract_regions(images, boxes, graph, loaded.spec.preprocess, 32, EmbedConfig(batch_size=2), cache)
    assert first.ok.all() and cache.stats.misses == 3 and cache.stats.hits == 0
    for i in (0, len(objects) - 1):  # each object as the exported graph computes it: its image letterboxed, its box
        image = load_image(objects[i].image)
        pixels, letterbox = letterbox_pixels(image, graph.region)
        with torch.no_grad():
            served = graph(torch.from_numpy(pixels[None]), torch.from_numpy(letterbox.to_frame(np.array([boxes[i]]))))
        assert np.abs(served.numpy()[0] - first.emb[i]).max() <= 1e-6
    again = extract_regions(images, boxes, graph, loaded.spec.preprocess, 32, EmbedConfig(batch_size=2), cache)
    assert cache.stats.hits == 3 and cache.stats.misses == 3 and np.array_equal(np.asarray(again.emb), np.asarray(first.emb))


def test_a_box_that_cannot_be_pooled_costs_only_its_object(digits_dataset: Path, dinov3_region, tmp_path: Path):
    loaded, graph = dinov3_region
    image = read_yolo(digits_dataset).images[0]
    run = extract_regions([image, image, image], [(2, 2, 30, 30), (5, 5, 5, 20), (400, 400, 500, 500)], graph,
                          loaded.spec.preprocess, 32)
    assert run.ok.tolist() == [True, False, False]
    assert [i for i, _ in run.bad_crops] == [1, 2]
    assert "box 0 (5, 5, 5, 20) has no area" in run.bad_crops[0][1]
    assert "lies wholly outside the 128x128 image" in run.bad_crops[1][1]


def test_sweep_puts_crop_and_region_rows_on_one_split(digits_dataset: Path, cache_dir: Path, tmp_path: Path):
    from headserve.train.sweep import SweepConfig, run_sweep

    table = run_sweep(SweepConfig(dataset=digits_dataset, out=tmp_path, profiles=("base",), encoders=("dinov3:tiny",),
                                  hidden=((),), label_smoothing=(0.1,), epochs=3, seeds=(42,),
                                  cache_dir=cache_dir, pooling=("crop", "region"))).read_text()
    assert "- dinov3:tiny / base: " in table and "- dinov3:tiny+region / base: " in table
    assert "- dinov3:tiny+region: macro_f1_fg" in table  # the region mode's own tuned baseline
    assert "| dinov3:tiny+region | base | logreg | " in table  # region against crop, paired on the same objects
    runs = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(runs) == 3 and runs[2].startswith(f"{digits_dataset.name}_dinov3_tiny+region_logreg")
