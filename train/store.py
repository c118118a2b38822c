"""The embeddings store: every crop of a dataset through one encoder, on disk, for training without images.

``headserve embed DATASET --encoder NAME --out EMB`` writes it; ``headserve train --embeddings EMB`` and
``sweep --embeddings EMB`` read it and never open an image. Layout (docs/architecture.md, "The embeddings
store"):

    EMB/manifest.json               format version, encoder identity and fingerprint, engine, precision,
                                    dataset identity, and each shard's rows and sha256: written last
    EMB/shards/part-00000.parquet   one row per embedded crop (STORE_COLUMNS), crops that failed in the
                                    shard's key-value metadata

The object index (labelled objects, then background crops, as ``train`` builds them) is built once and cut
into shards of whole images, in the order training extracts them, so each image is decoded once for all of
its objects. A shard's name is its number and its content is fixed by the plan (``ShardPlan.digest``: the
encoder, engine, precision and the keys of its crops), so whoever computes it (the built-in loop, a Ray
actor, a retry of either) writes the same file through a temp path and a rename: a retried shard replaces
itself, never adds rows. The manifest is written last, after every shard's rows were counted against the
plan: a store without a manifest is unfinished, and the next run computes only the shards that are not
there with their plan's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from headserve.errors import ConfigError, DatasetError
from headserve.fsutil import FILE_MODE, ensure_dir, write_text_atomic
from headserve.train.errors import EmbeddingStoreError

if TYPE_CHECKING:
    from headserve.contract import EncoderIdentity
    from headserve.encoders import EncoderSpec
    from headserve.train.dataset import LabelledObject, YoloDataset
    from headserve.train.embed import EmbedConfig, Extraction

STORE_FORMAT = "headserve-embeddings"  # manifest "format": what this directory is
STORE_VERSION = 1  # manifest "version": bumped when a reader of the old layout would misread the new one
MANIFEST = "manifest.json"
SHARDS = "shards"
BACKGROUND_CLASS = -1  # class_id of a background crop in the store; train numbers it after the dataset's classes
# Parquet columns of a shard, in order (the schema is `shard_schema`):
STORE_COLUMNS = ("key", "index", "embedding", "class_id", "class_name", "image", "box", "source", "group")
SHARD_META = b"headserve.shard"  # Parquet key-value metadata: the shard's plan digest and its failed crops (JSON)
DEFAULT_SHARD_ROWS = 1024  # crops per shard at most (whole images); a shard is one unit of work and of retry
MAX_SHARD_PIXEL_BYTES = 96 << 20  # a shard's decoded crops at most (one Ray block); large inputs get fewer crops


def shard_rows_for(input_size: int, shard_rows: int) -> int:
    """Crops per shard: ``shard_rows``, fewer where their pixels would pass MAX_SHARD_PIXEL_BYTES."""
    return max(1, min(shard_rows, MAX_SHARD_PIXEL_BYTES // (input_size * input_size * 3)))


@dataclass(frozen=True)
class EmbedRequest:
    """One `headserve embed`: which dataset, through which encoder, into which store, on what."""

    dataset: Path  # YOLO dataset root
    encoder: "EncoderSpec"  # the frozen encoder
    out: Path  # the store directory (EMB)
    embed: "EmbedConfig" = field(default_factory=lambda: _default_embed_config())  # device, engine, precision
    ray: str | None = None  # None: built-in (one process); "": Ray Data on a local Ray or RAY_ADDRESS; else its address
    shard_rows: int = DEFAULT_SHARD_ROWS  # crops per shard at most (whole images per shard)
    background: bool = True  # add background crops as `train` draws them (one class; train may split them)
    bg_per_image: int = 2  # background crops per image, as `train`'s default
    seed: int = 42  # background sampling seed, as `train`'s default
    strict: bool = False  # bad label lines raise instead of being skipped
    reject_outside: bool = False  # skip lines with coordinates outside [0, 1] instead of clipping them
    progress: bool = False  # a progress bar (built-in path)
    actors: int = 0  # Ray: encoder actors at most; 0: one per GPU of the cluster, else one per 2 CPUs

    def __post_init__(self) -> None:
        if self.shard_rows < 1:
            raise ConfigError.bad_value("shard_rows", self.shard_rows, "a shard holds at least one crop")
        if self.bg_per_image < 0 or self.actors < 0:
            bad = "bg_per_image" if self.bg_per_image < 0 else "actors"
            raise ConfigError.bad_value(bad, getattr(self, bad), "must be 0 or more")


def _default_embed_config() -> "EmbedConfig":
    from headserve.train.embed import EmbedConfig

    return EmbedConfig()


# ---------------------------------------------------------------------------------------------
# The object index and its plan


def crop_key(rel_image: str, box: Sequence[float], source: str) -> str:
    """The crop's key: its image (relative to the dataset root), box and label line, hashed (16 hex digits)."""
    text = f"{rel_image}|{','.join(f'{v:.4f}' for v in box)}|{source}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IndexRow:
    """One crop of the object index: what a store row records besides the embedding."""

    index: int  # position in the object index: train's row order
    key: str  # crop_key
    class_id: int  # the dataset's class id; BACKGROUND_CLASS for a background crop
    class_name: str
    image: str  # path relative to the dataset root
    box: tuple[float, float, float, float]  # x1 y1 x2 y2 in pixels of the displayed image
    source: str  # label file:line, or "background"


@dataclass(frozen=True)
class ShardPlan:
    """One shard: whole images, their crops in training's extraction order."""

    number: int
    rows: tuple[int, ...]  # object indices, image by image
    digest: str  # sha256 of the encoder identity, engine, precision and the crops' keys: what the file must hold

    @property
    def name(self) -> str:
        return f"{SHARDS}/part-{self.number:05d}.parquet"


def _relative(root: Path, image: Path) -> str:
    return image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)


def build_index(data: "YoloDataset", objects: Sequence["LabelledObject"]) -> list[IndexRow]:
    """Store rows of ``objects`` (labelled, then background), in order."""
    rows = []
    for i, o in enumerate(objects):
        rel = _relative(data.root, o.image)
        background = o.source == "background"
        rows.append(IndexRow(i, crop_key(rel, o.box, o.source), BACKGROUND_CLASS if background else o.class_id,
                             "background" if background else data.names[o.class_id], rel,
                             tuple(float(v) for v in o.box), o.source))  # type: ignore[arg-type]
    return rows


def plan_shards(index: Sequence[IndexRow], shard_rows: int, identity: Mapping[str, Any]) -> list[ShardPlan]:
    """Cut the index into shards of whole images, images in order of first appearance (as extraction goes)."""
    groups: dict[str, list[int]] = {}
    for row in index:
        groups.setdefault(row.image, []).append(row.index)
    salt = json.dumps(identity, sort_keys=True)
    plans: list[ShardPlan] = []
    current: list[int] = []

    def close() -> None:
        h = hashlib.sha256(salt.encode())
        for i in current:
            h.update(index[i].key.encode())
        plans.append(ShardPlan(len(plans), tuple(current), h.hexdigest()))
        current.clear()

    for idx in groups.values():
        if current and len(current) + len(idx) > shard_rows:
            close()
        current.extend(idx)
    if current:
        close()
    return plans


def objects_digest(names: Sequence[str], index: Sequence[IndexRow]) -> str:
    """The dataset's identity as the store saw it: class names and every crop's key and class."""
    h = hashlib.sha256(json.dumps(list(names)).encode())
    for row in index:
        h.update(f"{row.key}:{row.class_id};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Shards


def shard_schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("index", pa.int64()), ("embedding", pa.list_(pa.float32(), dim)),
                      ("class_id", pa.int32()), ("class_name", pa.string()), ("image", pa.string()),
                      ("box", pa.list_(pa.float64(), 4)), ("source", pa.string()), ("group", pa.string())])


@dataclass(frozen=True)
class Skipped:
    """A crop of the index that has no row: its image did not decode, or its box was too small to crop."""

    index: int
    kind: str  # "image" (the whole image failed) or "crop" (this box only)
    why: str


@dataclass(frozen=True)
class ShardDone:
    """A written shard as the manifest lists it."""

    name: str  # path relative to the store
    rows: int  # embedded crops in it
    skipped: tuple[Skipped, ...]  # crops of its plan without a row
    sha256: str  # of the file

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.name, "rows": self.rows, "skipped": len(self.skipped), "sha256": self.sha256}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(store: Path, plan: ShardPlan, index: Sequence[IndexRow] | Mapping[int, IndexRow], emb: Mapping[int, np.ndarray],
                skipped: Sequence[Skipped], dim: int) -> ShardDone:
    """Write one shard: a row per embedded crop of ``plan``, through a temp file and a rename.

    Every crop of the plan is either in ``emb`` or in ``skipped``: a shard with a gap is refused before
    anything is written. A retry writes the same name with the same rows, so a second write replaces the first.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    gone = {s.index for s in skipped}
    missing = [i for i in plan.rows if i not in emb and i not in gone]
    if missing:
        raise EmbeddingStoreError(f"shard {plan.number} of {store}: crops {missing[:5]} have neither an embedding "
                                  "nor a reason they were skipped; nothing was written for it")
    rows = [index[i] for i in plan.rows if i in emb]
    matrix = np.stack([np.asarray(emb[r.index], dtype=np.float32) for r in rows]) if rows else \
        np.zeros((0, dim), np.float32)
    table = pa.table({
        "key": [r.key for r in rows], "index": [r.index for r in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim),
        "class_id": [r.class_id for r in rows], "class_name": [r.class_name for r in rows],
        "image": [r.image for r in rows], "box": [list(r.box) for r in rows], "source": [r.source for r in rows],
        "group": [r.image for r in rows],
    }, schema=shard_schema(dim))
    meta = {"digest": plan.digest, "plan_rows": len(plan.rows),
            "skipped": [[s.index, s.kind, s.why] for s in skipped]}
    table = table.replace_schema_metadata({SHARD_META: json.dumps(meta).encode()})
    final = store / plan.name
    ensure_dir(final.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)  # atomic: a reader or a retry sees the old whole file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ShardDone(plan.name, len(rows), tuple(skipped), _file_sha256(final))


def finished_shard(store: Path, plan: ShardPlan) -> ShardDone | None:
    """The shard already on disk for ``plan`` (a resumed run keeps it), or None when it must be computed."""
    import pyarrow.parquet as pq

    path = store / plan.name
    if not path.is_file():
        return None
    try:
        schema = pq.read_schema(path)
        meta = json.loads((schema.metadata or {}).get(SHARD_META, b"{}"))
        rows = pq.read_metadata(path).num_rows
    except (OSError, ValueError):  # a damaged file is recomputed, never trusted
        return None
    skipped = tuple(Skipped(int(i), str(k), str(w)) for i, k, w in meta.get("skipped", []))
    if meta.get("digest") != plan.digest or rows + len(skipped) != len(plan.rows):
        return None
    return ShardDone(plan.name, rows, skipped, _file_sha256(path))


# ---------------------------------------------------------------------------------------------
# Writing a store


@dataclass
class EmbedOutcome:
    """What `headserve embed` did."""

    store: Path
    shards: int  # shards in the store
    computed: int  # shards computed by this run (the others were already there)
    rows: int  # embedded crops in the store
    skipped: int  # crops without a row (unreadable image, box too small)
    seconds: float  # wall time of the embedding, after the encoder was built
    runner: str  # "built-in" or "ray"
    lines: list[str] = field(default_factory=list)  # what the command prints


@dataclass
class _Prepared:
    """The driver's side of an embed run: the dataset, its index, the encoder's identity and the plan."""

    data: "YoloDataset"
    index: list[IndexRow]
    identity: "EncoderIdentity"
    engine_identity: dict[str, Any]
    plans: list[ShardPlan]
    shard_rows: int
    loaded: Any  # the encoder as loaded on the driver (headserve.backbones.LoadedEncoder)


def _prepare(req: EmbedRequest) -> _Prepared:
    from headserve.backbones import encoder_graph, fingerprint, load_encoder
    from headserve.contract import EncoderIdentity
    from headserve.train.dataset import background_objects, read_yolo
    from headserve.train.pipeline import _check_labelled

    data = read_yolo(req.dataset, strict=req.strict, reject_outside=req.reject_outside)
    _check_labelled(data)
    objects = list(data.objects)
    if req.background and req.bg_per_image:
        objects += background_objects(data, req.bg_per_image, BACKGROUND_CLASS, seed=req.seed)
    index = build_index(data, objects)
    loaded = load_encoder(req.encoder)
    fp = fingerprint(encoder_graph(loaded), loaded.spec.preprocess)
    identity = EncoderIdentity.from_spec(loaded.spec, fp)
    engine_identity = {"encoder": identity.to_parameters(), "engine": req.embed.engine,
                       "precision": req.embed.precision}
    rows = shard_rows_for(loaded.spec.preprocess.input_size, req.shard_rows)
    return _Prepared(data, index, identity, engine_identity, plan_shards(index, rows, engine_identity), rows, loaded)


def _refuse_other_store(req: EmbedRequest, prepared: _Prepared) -> None:
    """A finished store of another encoder, engine, precision or dataset at ``out`` is never overwritten."""
    path = req.out / MANIFEST
    if not path.is_file():
        return
    old = read_manifest(req.out)
    ours = {**prepared.engine_identity, "objects_sha256": objects_digest(prepared.data.names, prepared.index)}
    theirs = {"encoder": old.get("encoder"), "engine": old.get("engine"), "precision": old.get("precision"),
              "objects_sha256": old.get("dataset", {}).get("objects_sha256")}
    if ours != theirs:
        raise EmbeddingStoreError(f"{req.out} already holds the embeddings of {_describe(old)}; this run would "
                                  f"write {_describe({**prepared.engine_identity, 'dataset': {'root': str(req.dataset)}})}"
                                  "; write it to another directory or delete that store")


def embed_dataset(req: EmbedRequest) -> EmbedOutcome:
    """Embed every crop of ``req.dataset`` into the store ``req.out``, computing only shards not already there.

    The built-in runner streams today's extraction (``train.embed.extract``) into shards; ``req.ray`` runs the
    same plan on Ray Data (``train.ray_embed``). Either way the manifest is written last. One run at a time
    writes a store (the writer lock of ``headserve.lockfile``): a second waits, then finds the shards done.
    """
    from headserve.lockfile import repository_lock

    prepared = _prepare(req)
    with repository_lock(req.out):
        _refuse_other_store(req, prepared)
        ensure_dir(req.out / SHARDS)
        done: dict[int, ShardDone] = {}
        for plan in prepared.plans:
            have = finished_shard(req.out, plan)
            if have is not None:
                done[plan.number] = have
        todo = [p for p in prepared.plans if p.number not in done]
        t0 = time.perf_counter()
        runner = "built-in" if req.ray is None else "ray"
        facts: Mapping[str, Any] = {"device": "cpu", "min_cosine_to_fp32": None}
        if todo and req.ray is None:
            facts = _embed_built_in(req, prepared, todo, done)
        elif todo:
            from headserve.train.ray_embed import embed_on_ray

            facts = embed_on_ray(req, prepared.index, todo, prepared.identity.fingerprint or "",
                                 prepared.loaded.spec.preprocess, done)
        seconds = time.perf_counter() - t0
        manifest = _manifest(req, prepared, done, runner, facts)
        _remove_strays(req.out, prepared.plans)
        write_text_atomic(req.out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    rows = sum(d.rows for d in done.values())
    skipped = sum(len(d.skipped) for d in done.values())
    lines = [f"store: {req.out} ({len(prepared.plans)} shard(s), {rows} crops embedded, {skipped} skipped)",
             f"computed {len(todo)} shard(s) of {len(prepared.plans)} ({runner}, {req.embed.engine} "
             f"{req.embed.precision}) in {seconds:.1f} s; the others were already there",
             prepared.data.report.summary()]
    if facts.get("rows_by_node"):
        lines.insert(2, f"{facts['actors']} encoder actor(s); crops embedded per Ray node: " + ", ".join(
            f"{node} {n}" for node, n in sorted(facts["rows_by_node"].items())))
    return EmbedOutcome(req.out, len(prepared.plans), len(todo), rows, skipped, seconds, runner, lines)


def _remove_strays(store: Path, plans: Sequence[ShardPlan]) -> None:
    """Shards of an earlier, unfinished plan (another --shard-rows, encoder or dataset) and temp files of killed
    writers: the manifest lists only this plan's shards, so nothing else is left beside them."""
    keep = {(store / p.name).name for p in plans}
    for path in (store / SHARDS).iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _embed_built_in(req: EmbedRequest, prepared: _Prepared, todo: list[ShardPlan],
                    done: dict[int, ShardDone]) -> dict[str, Any]:
    """Today's streaming extraction over the missing shards' crops, each shard written once its crops are in."""
    from headserve.backbones import encoder_graph
    from headserve.train.dataset import LabelledObject

    loaded = prepared.loaded
    graph = encoder_graph(loaded)
    order = [i for plan in todo for i in plan.rows]  # extraction order: shard by shard, image by image
    root = prepared.data.root
    objects = [LabelledObject(root / prepared.index[i].image, 0, prepared.index[i].box, prepared.index[i].source)
               for i in order]
    owner = {i: plan for plan in todo for i in plan.rows}
    pending: dict[int, dict[int, np.ndarray]] = {p.number: {} for p in todo}
    skipped: dict[int, list[Skipped]] = {p.number: [] for p in todo}
    dim = loaded.spec.embedding_dim

    def finished(indices: Sequence[int], emb: np.ndarray | None, why: str | None, kind: str) -> None:
        for n, pos in enumerate(indices):
            i = order[pos]
            plan = owner[i]
            if emb is not None:
                pending[plan.number][i] = emb[n]
            else:
                skipped[plan.number].append(Skipped(i, kind, why or ""))
            if len(pending[plan.number]) + len(skipped[plan.number]) == len(plan.rows):
                done[plan.number] = write_shard(req.out, plan, prepared.index, pending.pop(plan.number),
                                                skipped.pop(plan.number), dim)

    from headserve.train.embed import extract

    run = extract([o.image for o in objects], [o.box for o in objects], graph, loaded.spec.preprocess, dim,
                  req.embed, scratch=req.out, progress=req.progress, on_done=finished)
    return {"device": run.device, "min_cosine_to_fp32": run.min_cosine}


def _manifest(req: EmbedRequest, prepared: _Prepared, done: Mapping[int, ShardDone], runner: str,
              facts: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest, after every shard of the plan is on disk with its rows: no gap, no duplicate."""
    shards = []
    for plan in prepared.plans:
        shard = done.get(plan.number)
        if shard is None or shard.rows + len(shard.skipped) != len(plan.rows):
            raise EmbeddingStoreError(f"{req.out}: shard {plan.number} is missing or holds "
                                      f"{None if shard is None else shard.rows + len(shard.skipped)} of its "
                                      f"{len(plan.rows)} crops; run headserve embed again to compute it")
        shards.append(shard.to_dict())
    data = prepared.data
    root = data.root.resolve()
    return {
        "format": STORE_FORMAT, "version": STORE_VERSION,
        "encoder": prepared.engine_identity["encoder"], "engine": req.embed.engine, "precision": req.embed.precision,
        "device": facts.get("device"), "min_cosine_to_fp32": facts.get("min_cosine_to_fp32"), "runner": runner,
        # on Ray: encoder actors and the crops each node's actor embedded in this run (a resumed run counts its own)
        **({"ray": {"actors": facts["actors"], "rows_by_node": facts["rows_by_node"]}} if "rows_by_node" in facts
           else {}),
        "dataset": {"root": str(root), "names": list(data.names), "objects": len(prepared.index),
                    "images": len({r.image for r in prepared.index}),
                    "objects_sha256": objects_digest(data.names, prepared.index),
                    "declared": {k: [_relative(root, f) for f in v] for k, v in data.declared.items()},
                    "reject_outside": req.reject_outside,
                    "background": {"per_image": req.bg_per_image if req.background else 0, "seed": req.seed}},
        "report": {"problems": list(data.report.problems), "counts": dict(data.report.counts)},
        "shard_rows": prepared.shard_rows,
        "rows": sum(d.rows for d in done.values()),
        "shards": shards,
    }


# ---------------------------------------------------------------------------------------------
# Reading a store


def read_manifest(store: Path) -> dict[str, Any]:
    """The manifest of a finished store; a directory without one (or of another format) is refused."""
    path = Path(store) / MANIFEST
    if not path.is_file():
        hint = " (an interrupted `headserve embed`: run it again to finish)" if (Path(store) / SHARDS).is_dir() else ""
        raise EmbeddingStoreError(f"{store}: no {MANIFEST}, so not a finished embeddings store{hint}; write one with "
                                  "headserve embed")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmbeddingStoreError(f"{path}: not readable as JSON ({exc}); embed the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise EmbeddingStoreError(f"{path}: not a headserve embeddings store manifest (format "
                                  f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != STORE_VERSION:
        raise EmbeddingStoreError(f"{path}: store format version {manifest.get('version')!r}; this headserve reads "
                                  f"version {STORE_VERSION}: embed the dataset again with this headserve")
    return manifest


def _describe(manifest: Mapping[str, Any]) -> str:
    """``clip:tiny (fingerprint 8791f5732b34, engine torch, precision fp32) of /data/root``, as messages name a store."""
    enc = manifest.get("encoder") or {}
    name = enc.get("encoder_name") or f"{enc.get('encoder_type', '?')}:{enc.get('encoder_model', '?')}"
    fp = str(enc.get("encoder_fingerprint", "unrecorded")).removeprefix("sha256:")[:12]
    return (f"{name} (fingerprint {fp}, engine {manifest.get('engine')}, precision {manifest.get('precision')}) "
            f"of {manifest.get('dataset', {}).get('root')}")


@dataclass
class Store:
    """A finished store, opened for training: its manifest and what it says about the dataset."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Store":
        return cls(Path(path), read_manifest(Path(path)))

    @property
    def root(self) -> Path:
        return Path(self.manifest["dataset"]["root"])

    def require(self, identity: "EncoderIdentity", embed: "EmbedConfig") -> None:
        """Refuse a store computed by another encoder, engine or precision than this run's, naming both."""
        theirs = self.manifest["encoder"]
        ours = identity.to_parameters()
        keys = ("encoder_type", "encoder_model", "embedding_dim", "encoder_fingerprint")
        if any(ours.get(k) != theirs.get(k) for k in keys) or \
                (embed.engine, embed.precision) != (self.manifest["engine"], self.manifest["precision"]):
            mine = {"encoder": ours, "engine": embed.engine, "precision": embed.precision, "dataset": self.manifest["dataset"]}
            raise EmbeddingStoreError(
                f"{self.path} holds the embeddings of {_describe(self.manifest).rsplit(' of ', 1)[0]}, but this run "
                f"embeds with {_describe(mine).rsplit(' of ', 1)[0]}; use the store's `encoder_name`, `engine` "
                "and `precision`, or write a store for this encoder with headserve embed")

    def require_options(self, bg_per_image: int, seed: int, background: bool, reject_outside: bool) -> None:
        """Background crops and clipping are fixed when the store is written; a train asking for others is refused."""
        ds = self.manifest["dataset"]
        stored = ds["background"]
        if background and (stored["per_image"], stored["seed"]) != (bg_per_image, seed):
            raise EmbeddingStoreError(
                f"{self.path} holds {stored['per_image']} background crop(s) per image drawn with seed {stored['seed']}, "
                f"but training asks for {bg_per_image} with seed {seed}; embed again with those, or train with the "
                "store's")
        if ds["reject_outside"] != reject_outside:
            raise EmbeddingStoreError(f"{self.path} was written with reject_outside {ds['reject_outside']}; train "
                                      f"with the same `reject_outside`")

    def rows(self) -> Iterator[Any]:
        """Each shard's table in turn (pyarrow), after checking its sha256 against the manifest."""
        import pyarrow.parquet as pq

        for shard in self.manifest["shards"]:
            path = self.path / shard["file"]
            if not path.is_file() or _file_sha256(path) != shard["sha256"]:
                raise EmbeddingStoreError(f"{path}: missing, or not the file the manifest lists (sha256 differs); "
                                          "embed the dataset again")
            table = pq.read_table(path)
            if table.num_rows != shard["rows"]:
                raise EmbeddingStoreError(f"{path}: {table.num_rows} rows, the manifest says {shard['rows']}")
            yield table

    def skipped(self) -> list[tuple[int, str, str]]:
        """(object index, kind, why) of every crop without a row."""
        import pyarrow.parquet as pq

        out: list[tuple[int, str, str]] = []
        for shard in self.manifest["shards"]:
            meta = json.loads((pq.read_schema(self.path / shard["file"]).metadata or {}).get(SHARD_META, b"{}"))
            out.extend((int(i), str(k), str(w)) for i, k, w in meta.get("skipped", []))
        return out

    def dataset(self, strict: bool = False) -> tuple["YoloDataset", list["LabelledObject"]]:
        """The dataset as the store saw it (foreground objects), and its background crops; no image is opened."""
        from collections import Counter

        from headserve.train.dataset import DataReport, LabelledObject, YoloDataset

        ds = self.manifest["dataset"]
        root = self.root
        report = DataReport(strict=False)
        report.problems = list(self.manifest["report"]["problems"])
        report.counts = Counter(self.manifest["report"]["counts"])
        if strict and report.problems:
            raise DatasetError(f"{self.path}: the dataset had problems when it was embedded ({report.summary()}); "
                               "strict mode refuses them: fix the dataset and embed it again")
        objects: dict[int, LabelledObject] = {}
        for table in self.rows():
            cols = table.select(["index", "class_id", "image", "box", "source"]).to_pydict()
            for i, cid, image, box, source in zip(cols["index"], cols["class_id"], cols["image"], cols["box"],
                                                  cols["source"]):
                objects[i] = LabelledObject(root / image, cid, (box[0], box[1], box[2], box[3]), source)
        for i, kind, why in self.skipped():  # reported as `train` reports them; they have no row to train on
            report.skip("unreadable image" if kind == "image" else "box too small to crop", f"crop {i}", why)
        ordered = [objects[i] for i in sorted(objects)]
        foreground = [o for o in ordered if o.class_id != BACKGROUND_CLASS]
        background = [o for o in ordered if o.class_id == BACKGROUND_CLASS]
        declared = {k: tuple((root / f).resolve() for f in v) for k, v in ds.get("declared", {}).items()}
        images = sorted({o.image for o in ordered})
        return YoloDataset(root=root, names=list(ds["names"]), objects=foreground, images=images, report=report,
                           declared=declared), background

    def extraction(self, objects: Sequence["LabelledObject"], dim: int) -> "Extraction":
        """The embeddings of ``objects`` (in their order) as ``extract`` would return them, from the shards."""
        from headserve.train.embed import Extraction, scratch_array

        if int(self.manifest["encoder"].get("embedding_dim", dim)) != dim:
            raise EmbeddingStoreError(f"{self.path}: embeddings of width {self.manifest['encoder']['embedding_dim']}, "
                                      f"the encoder's are {dim}")
        root = self.root
        where: dict[str, int] = {}
        for n, o in enumerate(objects):
            where[crop_key(_relative(root, o.image), o.box, o.source)] = n
        emb = scratch_array(len(objects), dim, None)
        ok = np.zeros(len(objects), dtype=bool)
        for table in self.rows():
            keys = table.column("key").to_pylist()
            matrix = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
            for key, row in zip(keys, matrix):
                if key in where:
                    emb[where[key]] = row
                    ok[where[key]] = True
        return Extraction(emb, ok, [], [], str(self.manifest.get("device") or "cpu"),
                          str(self.manifest["precision"]), self.manifest.get("min_cosine_to_fp32"), 0.0,
                          str(self.manifest["engine"]))
