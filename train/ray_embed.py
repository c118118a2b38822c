"""`headserve embed --ray`: the embeddings store's shards computed on Ray Data, from a laptop to a cluster.

The driver builds the object index and the plan once (``train.store``) and hands Ray one row per missing
shard, carrying that shard's crops (image, box, key, class). Then:

1. decode (Ray tasks, one CPU each): a shard's images are decoded once each for all their objects, cropped
   and resized by the encoder's rule (``train.decode``, the built-in path's own function); the result is
   one row holding the shard's pixels, so a shard is never split across encoder calls;
2. encode (an actor pool, ``ray.data.ActorPoolStrategy``): each actor loads the encoder once, checks its
   fingerprint against the driver's, embeds the shard in batches sized for its device (``num_gpus=1`` per
   actor where the cluster has GPUs), and writes the shard itself (``train.store.write_shard``: temp path,
   rename), returning only the shard's row count and sha256.

What streams back to the driver is one small record per shard, so the driver's memory does not grow with
the dataset; the workers hold a few shards' pixels at a time (Ray Data's backpressure). A killed task or
actor is retried by Ray (actors restart, ``max_restarts=-1``); the retry writes the same shard name with the
same rows, so nothing is duplicated, and the driver writes the manifest only once every shard is counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from headserve.errors import ConfigError
from headserve.ray_cluster import connect, import_ray
from headserve.train.errors import EmbeddingStoreError
from headserve.train.store import IndexRow, ShardDone, ShardPlan, Skipped, write_shard

if TYPE_CHECKING:
    from headserve.encoders import EncoderSpec, PreprocessSpec
    from headserve.train.embed import EmbedConfig
    from headserve.train.store import EmbedRequest

BATCH_BY_DEVICE = {"cpu": 64, "cuda": 256, "mps": 64}  # crops per encoder call, by the actor's device kind
DECODE_MEMORY = 512 << 20  # bytes a decode task reserves: a shard's pixels (store.MAX_SHARD_PIXEL_BYTES), a photo
ACTOR_START_TIMEOUT_S = 600  # how long the pool's actors may take to start and load the encoder (a cluster adding nodes)
CPUS_PER_CPU_ACTOR = 1  # an encoder actor on a CPU node; its torch/OpenVINO threads use that many cores


def _shard_item(plan: ShardPlan, index: Sequence[IndexRow]) -> dict[str, Any]:
    rows = [index[i] for i in plan.rows]
    return {"shard": plan.number, "plan": json.dumps({
        "digest": plan.digest, "rows": list(plan.rows),
        "index": [[r.index, r.key, r.class_id, r.class_name, r.image, list(r.box), r.source] for r in rows]})}


def _plan_of(shard: int, text: str) -> tuple[ShardPlan, dict[int, IndexRow]]:
    """A shard row's plan and its crops, as ``_shard_item`` wrote them."""
    data = json.loads(text)
    rows = {int(r[0]): IndexRow(int(r[0]), r[1], int(r[2]), r[3], r[4], tuple(r[5]), r[6]) for r in data["index"]}
    return ShardPlan(shard, tuple(data["rows"]), data["digest"]), rows


def decode_shards(batch: dict[str, np.ndarray], root: str, preprocess: str) -> dict[str, Any]:
    """Ray task: each shard's images decoded once, cropped and resized; one output row per shard."""
    from headserve.encoders import PreprocessSpec
    from headserve.train.decode import ImageFailed, decode_crops, grouped_by_image

    spec = PreprocessSpec.from_json(preprocess)
    out: dict[str, list[Any]] = {"shard": [], "plan": [], "pixels": [], "ok": [], "skipped": []}
    for shard, text in zip(batch["shard"], batch["plan"]):
        plan, rows = _plan_of(int(shard), str(text))
        order = list(plan.rows)
        groups = grouped_by_image([Path(rows[i].image) for i in order])  # images in order of first appearance
        pixels: list[np.ndarray] = []
        ok: list[int] = []
        skipped: list[list[Any]] = []
        for image, positions in groups:
            result = decode_crops(Path(root) / image, [rows[order[p]].box for p in positions], spec)
            if isinstance(result, ImageFailed):
                skipped += [[order[p], "image", str(result)] for p in positions]
                continue
            for p, px in zip(positions, result):
                if isinstance(px, ImageFailed):
                    skipped.append([order[p], "crop", str(px)])
                else:
                    pixels.append(px)
                    ok.append(order[p])
        size = spec.input_size
        out["shard"].append(int(shard))
        out["plan"].append(str(text))
        out["pixels"].append(np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8))
        out["ok"].append(np.asarray(ok, dtype=np.int64))
        out["skipped"].append(json.dumps(skipped))
    return {"shard": np.asarray(out["shard"], dtype=np.int64), "plan": np.asarray(out["plan"], dtype=object),
            "pixels": _ragged(out["pixels"]), "ok": _ragged(out["ok"]), "skipped": np.asarray(out["skipped"], dtype=object)}


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A column of arrays of different lengths (Ray Data stores it as a variable-shaped tensor column)."""
    column = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        column[i] = a
    return column


class ShardEncoder:
    """Ray actor: the encoder loaded once; each call embeds whole shards and writes them to the store."""

    def __init__(self, spec: "EncoderSpec", config: "EmbedConfig", fingerprint: str, store: str) -> None:
        from headserve.backbones import encoder_graph, load_encoder
        from headserve.backbones import fingerprint as fingerprint_of
        from headserve.train.embed import _Encoder

        loaded = load_encoder(spec)
        graph = encoder_graph(loaded)
        got = fingerprint_of(graph, loaded.spec.preprocess)
        if got != fingerprint:  # another node's weights would write another encoder's embeddings under this name
            raise EmbeddingStoreError(f"encoder {spec.name} on node {_node()} has fingerprint {got[:12]}, the driver's "
                                      f"is {fingerprint[:12]}: every node must load the same weights")
        self.encoder = _Encoder(graph, config, loaded.spec.preprocess.input_size)
        self.dim = loaded.spec.embedding_dim
        self.batch = config.batch_size
        self.store = Path(store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for shard, text, pixels, ok, skipped in zip(batch["shard"], batch["plan"], batch["pixels"], batch["ok"],
                                                    batch["skipped"]):
            plan, rows = _plan_of(int(shard), str(text))
            pixels = np.asarray(pixels)
            ok = np.asarray(ok, dtype=np.int64)
            emb: dict[int, np.ndarray] = {}
            for start in range(0, len(ok), self.batch):
                out = self.encoder(pixels[start:start + self.batch])
                emb.update(zip(ok[start:start + self.batch].tolist(), out))
            gone = [Skipped(int(i), str(k), str(w)) for i, k, w in json.loads(str(skipped))]
            written = write_shard(self.store, plan, rows, emb, gone, self.dim)
            done.append(json.dumps({"file": written.name, "rows": written.rows, "sha256": written.sha256,
                                    "skipped": [[s.index, s.kind, s.why] for s in written.skipped],
                                    "device": str(self.encoder.device), "min_cosine": self.encoder.min_cosine,
                                    "node": _node()}))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "done": np.asarray(done, dtype=object)}


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())[:12]


def actor_resources(engine: str, gpus: float, requested: int, cpus: float) -> tuple[int, dict[str, Any], str]:
    """(pool size, the actor's Ray resources, its device) for the cluster at hand.

    GPUs: one actor per GPU (``requested`` caps it), each on ``cuda``. No GPUs, or OpenVINO (the CPU
    engine of export/engine.py): actors of CPUS_PER_CPU_ACTOR each, leaving at least one CPU for decoding.
    """
    if engine == "torch" and gpus >= 1:
        size = min(int(gpus), requested) if requested else int(gpus)
        return size, {"num_gpus": 1}, "cuda"
    size = max(1, int(cpus - 1) // CPUS_PER_CPU_ACTOR)
    return (min(size, requested) if requested else size), {"num_cpus": CPUS_PER_CPU_ACTOR}, "cpu"


def embed_on_ray(req: "EmbedRequest", index: Sequence[IndexRow], todo: Sequence[ShardPlan], fingerprint: str,
                 preprocess: "PreprocessSpec", done: dict[int, ShardDone]) -> Mapping[str, Any]:
    """Compute the shards ``todo`` on Ray Data; each written shard is added to ``done`` as its record arrives."""
    ray = import_ray()  # a missing Ray is one line naming the extra, before anything else
    connect(req.ray)
    context = ray.data.DataContext.get_current()
    before = (context.enable_progress_bars, context.enable_auto_log_stats, context.wait_for_min_actors_s)
    context.enable_progress_bars = req.progress  # a caller's own Ray Data work keeps its settings (restored below)
    context.enable_auto_log_stats = False
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    try:
        return _run(req, index, todo, fingerprint, preprocess, done)
    finally:
        context.enable_progress_bars, context.enable_auto_log_stats, context.wait_for_min_actors_s = before


def _run(req: "EmbedRequest", index: Sequence[IndexRow], todo: Sequence[ShardPlan], fingerprint: str,
         preprocess: "PreprocessSpec", done: dict[int, ShardDone]) -> Mapping[str, Any]:
    """The pipeline of ``embed_on_ray``, once connected."""
    from dataclasses import replace

    import ray
    import ray.data

    resources = ray.cluster_resources()
    size, remote, device = actor_resources(req.embed.engine, float(resources.get("GPU", 0)), req.actors,
                                           float(resources.get("CPU", 1)))
    if req.embed.device != "auto" and req.embed.device.split(":")[0] != device:
        raise ConfigError.bad_value("device", req.embed.device, f"Ray's encoder actors run on {device} here "
                                                                "(the cluster's resources decide); use `device` auto")
    batch = BATCH_BY_DEVICE[device]
    config = replace(req.embed, device=device, batch_size=batch, workers=1)
    shards = ray.data.from_items([_shard_item(p, index) for p in todo], override_num_blocks=len(todo))
    # Decoding stays a Ray task of its own: tasks scale over every CPU of the cluster while the actors hold the
    # GPUs. Its memory reservation (which the actors do not make) also keeps Ray Data from fusing it into the actor.
    decoded = shards.map_batches(decode_shards,  # type: ignore[arg-type]  # Ray's stubs miss fn_kwargs' arguments
                                 batch_size=1, num_cpus=1, memory=DECODE_MEMORY, batch_format="numpy",
                                 fn_kwargs={"root": str(Path(req.dataset).resolve()),
                                            "preprocess": preprocess.to_json()})  # as loaded: a hub processor sets it
    # The whole pool is started, and waited for, before work is handed out, and an actor holds one shard at a
    # time: a pool growing from one actor, or actors queueing several shards near where they were decoded,
    # left a small job's shards all on one node's actor while the others idled. A shard is hundreds of
    # crops, so one in flight keeps an actor busy.
    encoded = decoded.map_batches(ShardEncoder, batch_size=1, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
                                  fn_constructor_kwargs={"spec": req.encoder, "config": config,
                                                         "fingerprint": fingerprint, "store": str(req.out.resolve())},
                                  **remote)
    facts: dict[str, Any] = {"device": device, "min_cosine_to_fp32": None, "actors": size, "rows_by_node": {}}
    for row in encoded.iter_rows():
        record = json.loads(str(row["done"]))
        facts["rows_by_node"][record["node"]] = facts["rows_by_node"].get(record["node"], 0) + int(record["rows"])
        skipped = tuple(Skipped(int(i), str(k), str(w)) for i, k, w in record["skipped"])
        done[int(row["shard"])] = ShardDone(record["file"], int(record["rows"]), skipped, record["sha256"])
        if record["min_cosine"] is not None:
            low = facts["min_cosine_to_fp32"]
            facts["min_cosine_to_fp32"] = record["min_cosine"] if low is None else min(low, record["min_cosine"])
    return facts
