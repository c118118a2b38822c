"""`headserve embed` and the embeddings store: built-in and on Ray Data, exactly once, resumable, refused for
another encoder, and a head trained from it byte-identical to one trained from the images."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from headserve.app.cli import EXIT_BAD_INPUT, main
from headserve.encoders import get_encoder
from headserve.train.store import MANIFEST, EmbedRequest, Store, embed_dataset

HEADSERVE = str(Path(sys.executable).with_name("headserve"))
SHARD_ROWS = 64  # the 80-image digits dataset's 336 crops make 6 shards: enough to lose one and resume


@pytest.fixture(scope="module")
def built_in_store(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`headserve embed` run as users run it: built-in, the tiny CLIP twin, torch fp32 on the CPU."""
    out = tmp_path_factory.mktemp("emb") / "built-in"
    done = subprocess.run([HEADSERVE, "embed", str(digits_dataset), "--encoder", "clip:tiny", "--out", str(out),
                           "--device", "cpu", "--shard-rows", str(SHARD_ROWS)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "computed 6 shard(s) of 6 (built-in, torch fp32)" in done.stdout
    return out


def _embeddings(store: Path) -> dict[str, np.ndarray]:
    """Every row of a store by crop key; a duplicated key fails."""
    rows: dict[str, np.ndarray] = {}
    for table in Store.open(store).rows():
        keys = table.column("key").to_pylist()
        emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        for key, e in zip(keys, emb):
            assert key not in rows, f"crop {key} stored twice"
            rows[key] = e
    return rows


def test_embed_writes_a_versioned_store_whose_manifest_counts_every_crop(built_in_store: Path,
                                                                         digits_dataset: Path):
    manifest = json.loads((built_in_store / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"], manifest["engine"], manifest["precision"]) == \
        ("headserve-embeddings", 1, "torch", "fp32")
    assert manifest["encoder"]["encoder_name"] == "clip:tiny" and manifest["encoder"]["encoder_fingerprint"]
    assert manifest["dataset"]["root"] == str(digits_dataset.resolve())
    assert manifest["rows"] == manifest["dataset"]["objects"] == len(_embeddings(built_in_store)) == 336
    assert [s["file"] for s in manifest["shards"]] == [f"shards/part-{i:05d}.parquet" for i in range(6)]
    table = pq.read_table(built_in_store / manifest["shards"][0]["file"])
    assert table.column_names == ["key", "index", "embedding", "class_id", "class_name", "image", "box", "source",
                                  "group"]
    assert not list((built_in_store / "shards").glob(".*"))  # no temp file left behind


def test_a_head_trained_from_the_store_is_byte_identical_to_one_trained_from_the_images(
        built_in_store: Path, trained_heads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from PIL import Image

    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.trainer import TrainConfig

    from_images = trained_heads["clip:tiny"]  # the session's head: the digits dataset's images, same request

    def no_image(*args, **kwargs):
        raise AssertionError("training from the store opened an image")

    monkeypatch.setattr(Image, "open", no_image)  # the promise under test: no image is opened
    from_store = train_from_yolo(TrainRequest(dataset=Path("/nonexistent"), encoder=get_encoder("clip:tiny"),
                                              out=tmp_path / "h", name=from_images.name, hidden=(64,),
                                              train=TrainConfig(epochs=40), embeddings=built_in_store)).artifact
    assert (from_store / "head.safetensors").read_bytes() == (from_images.artifact / "head.safetensors").read_bytes()
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (from_images.artifact, from_store))
    assert meta_a["classes"] == meta_b["classes"] and meta_a["metrics"] == meta_b["metrics"]
    assert meta_b["extra"]["embedding"]["store"] == str(built_in_store.resolve())


def test_train_refuses_a_store_of_another_encoder_naming_both(built_in_store: Path, tmp_path: Path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--embeddings", str(built_in_store), "--encoder", "dinov3:tiny",
                     "--out", str(tmp_path / "h")])
    assert code == EXIT_BAD_INPUT
    line = err.getvalue().strip()
    assert line.startswith(f"headserve train: error: {built_in_store} holds the embeddings of clip:tiny (fingerprint ")
    assert "but this run embeds with dinov3:tiny (fingerprint " in line and "\n" not in line
    assert not (tmp_path / "h").exists()


def test_an_interrupted_embed_is_resumed_computing_only_the_missing_shard(built_in_store: Path,
                                                                          digits_dataset: Path, tmp_path: Path):
    store = tmp_path / "emb"
    shutil.copytree(built_in_store, store)
    (store / MANIFEST).unlink()  # interrupted before the manifest: shard 3 never finished, shard 4 half-written
    (store / "shards" / "part-00003.parquet").unlink()
    (store / "shards" / ".part-00004.parquet.x.tmp").write_bytes(b"half")
    kept = {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("part-*.parquet")}
    with pytest.raises(Exception, match="no manifest.json, so not a finished embeddings store \\(an interrupted"):
        Store.open(store)
    outcome = embed_dataset(EmbedRequest(dataset=digits_dataset, encoder=get_encoder("clip:tiny"), out=store,
                                         shard_rows=SHARD_ROWS))
    assert (outcome.computed, outcome.shards, outcome.rows) == (1, 6, 336)
    assert not list((store / "shards").glob(".*"))  # the killed writer's temp file is gone
    assert {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("part-*.parquet") if p.name in kept} == kept
    got, want = _embeddings(store), _embeddings(built_in_store)
    assert got.keys() == want.keys()
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) == 0.0


def test_a_shard_replaced_after_the_store_was_written_is_refused_naming_it(built_in_store: Path, tmp_path: Path):
    from headserve.train.errors import EmbeddingStoreError

    store = tmp_path / "emb"
    shutil.copytree(built_in_store, store)
    shutil.copy(store / "shards" / "part-00002.parquet", store / "shards" / "part-00001.parquet")  # same schema
    with pytest.raises(EmbeddingStoreError, match=r"part-00001.parquet: missing, or not the file the manifest lists"):
        list(Store.open(store).rows())


def _dying_encoder(marker: Path):
    import ray.cloudpickle

    from headserve.train import ray_embed

    class DiesOnce(ray_embed.ShardEncoder):
        """Fault injection: after the first shard an encoder actor writes, its process exits before Ray hears back,
        once per run (the marker file). An OOM kill or a preempted node does this; nothing else produces it on
        demand. Ray restarts the actor and retries that shard, whose second write must replace the first."""

        def __call__(self, batch):
            out = super().__call__(batch)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return out

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    return DiesOnce


def test_embed_on_ray_equals_the_built_in_store_even_when_an_encoder_actor_dies_mid_run(
        built_in_store: Path, digits_dataset: Path, tmp_path: Path, ray_cluster, monkeypatch: pytest.MonkeyPatch):
    from headserve.train import ray_embed

    marker = tmp_path / "died"
    monkeypatch.setattr(ray_embed, "ShardEncoder", _dying_encoder(marker))
    store = tmp_path / "ray"
    outcome = embed_dataset(EmbedRequest(dataset=digits_dataset, encoder=get_encoder("clip:tiny"), out=store,
                                         shard_rows=SHARD_ROWS, ray=ray_cluster.address))
    assert marker.exists()  # an actor did die after writing a shard
    assert (outcome.runner, outcome.computed, outcome.rows) == ("ray", 6, 336)
    manifest = json.loads((store / MANIFEST).read_text())
    # every crop counted once on the node whose actor wrote it, the retried shard included
    assert sum(manifest["ray"]["rows_by_node"].values()) == 336 and manifest["ray"]["actors"] >= 1
    assert [s["rows"] for s in manifest["shards"]] == [s["rows"] for s in
                                                       json.loads((built_in_store / MANIFEST).read_text())["shards"]]
    got, want = _embeddings(store), _embeddings(built_in_store)  # no duplicate key (checked there), no gap:
    assert got.keys() == want.keys()
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-6
    assert not list((store / "shards").glob(".*"))
