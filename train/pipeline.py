"""YOLO dataset -> embeddings -> head -> artifact and report: what `headserve train` runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from headserve.artifact import HeadMeta
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.contract import SCORE_OUTPUTS, EncoderIdentity
from headserve.drift import DriftReference, reference_from_validation
from headserve.encoders import EncoderSpec
from headserve.errors import ConfigError, DatasetError
from headserve.head import ServingHead, save_head
from headserve.train.cache import EmbeddingCache
from headserve.train.dataset import LabelledObject, YoloDataset, background_objects, load_crop, read_yolo
from headserve.train.embed import EmbedConfig, Extraction, extract, pixels_of
from headserve.train.evaluation import classification_metrics, expected_calibration_error, ood_auroc, reliability
from headserve.train.ood import attach_ood, choose_threshold, fit_ood, foreground, ood_scores
from headserve.train.profiles import describe
from headserve.train.split import declared_split, group_split
from headserve.train.store import Store
from headserve.train.trainer import TrainConfig, fit_head, head_config_for

BACKGROUND_NAME = "background"


@dataclass(frozen=True)
class TrainRequest:
    """One head to train."""

    dataset: Path  # YOLO dataset root
    encoder: EncoderSpec  # frozen encoder the embeddings come from
    out: Path  # artifact directory to write
    name: str = "head"  # head name (Triton model name)
    hidden: tuple[int, ...] = (256,)  # MLP widths; () trains logistic regression
    background: bool = True  # add background classes of random crops that overlap no box
    bg_classes: int = 1  # number of background classes; crops are split among them by k-means on embeddings
    bg_per_image: int = 2  # background crops drawn per image
    test_size: float = 0.2  # fraction of source images held out for the report
    val_size: float = 0.2  # fraction of training images used for early stopping and calibration
    seed: int = 42  # split and background sampling seed
    strict: bool = False  # bad label lines raise instead of being skipped
    reject_outside: bool = False  # skip lines with coordinates outside [0, 1] instead of clipping them
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)  # device, precision and decoding threads
    profile: str = "custom"  # recipe profile name `train` came from; recorded in meta.json and the report
    cache_dir: Path | None = None  # embedding cache root; None computes every embedding
    report_dir: Path | None = None  # where the Markdown + PNG report goes; None writes none
    ood_quantile: float = 0.95  # known validation crops below the OOD threshold
    ood_holdout: str | None = None  # class left out of training and scored as OOD, for the OOD AUROC
    progress: bool = False  # show a progress bar while embedding
    selection: Mapping[str, Any] | None = None  # the --select grid, every point's score and the choice, for meta.json
    embeddings: Path | None = None  # an embeddings store (`headserve embed`) to train from: no image is opened

    def __post_init__(self) -> None:
        if self.bg_classes < 1:
            raise DatasetError.bad_value("bg_classes", self.bg_classes,
                                         "the number of background classes must be at least 1")
        if not 0.0 < self.ood_quantile < 1.0:
            raise ConfigError.bad_value("ood_quantile", self.ood_quantile,
                                        "the share of known crops below the OOD threshold must be in (0, 1)")


@dataclass
class TrainOutcome:
    artifact: Path
    meta: HeadMeta
    metrics: dict[str, object]
    test_objects: list[LabelledObject]
    test_labels: np.ndarray
    report_lines: list[str]
    timings: dict[str, float]
    test_embeddings: np.ndarray | None = None  # (N, D) embeddings of the held-out crops
    report: Path | None = None  # the report's Markdown file when one was written
    test_outputs: dict[str, np.ndarray] = field(default_factory=dict)  # in-process head outputs on the test crops

    @cached_property
    def test_pixels(self) -> np.ndarray:
        """(N, S, S, 3) uint8: the held-out crops as the encoder sees them, decoded on first use only,
        so that training itself never holds crops in memory."""
        return pixels_of((load_crop(o) for o in self.test_objects), self.meta.preprocess_spec)


@dataclass
class PreparedData:
    """Embeddings and splits of one dataset through one encoder: what every head fit starts from."""

    spec: EncoderSpec  # the loaded encoder's spec
    fingerprint: str  # encoder weights + preprocessing
    data: YoloDataset
    classes: list[str]  # foreground then background names, in label order
    background: list[int]  # background class indices
    objects: list[LabelledObject]  # one per embedding row
    emb: np.ndarray  # (N, D) float32, memory-mapped on disk
    labels: np.ndarray  # (N,) int64
    holdout_emb: np.ndarray  # (M, D) embeddings of the held-out OOD class (M may be 0)
    fit_idx: np.ndarray  # rows the head is fitted on
    val_idx: np.ndarray  # rows for early stopping, calibration and the OOD threshold
    test_idx: np.ndarray  # rows the report measures
    cache: EmbeddingCache | None
    timings: dict[str, float]
    extraction: dict[str, object] = field(default_factory=dict)  # device, precision, fp32 check, rate
    split: str = ""  # how the rows were split into fit, validation and test, for the output and the report


def prepare(req: TrainRequest) -> PreparedData:
    """Read the dataset, embed every crop (through the cache) and split by source image."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = Store.open(req.embeddings) if req.embeddings is not None else None
    stored_background: list[LabelledObject] = []
    if store is not None:
        store.require_options(req.bg_per_image, req.seed, req.background, req.reject_outside)
        data, stored_background = store.dataset(strict=req.strict)
    else:
        data = read_yolo(req.dataset, strict=req.strict, reject_outside=req.reject_outside)
    _check_labelled(data)  # before background crops, which every image gives, make a dataset look labelled
    classes = list(data.names)
    objects = list(data.objects)
    holdout: list[LabelledObject] = []
    if req.ood_holdout is not None:
        classes, objects, holdout = _hold_out(data, req.ood_holdout)
    n_fg = len(classes)
    background: list[int] = []
    if req.background:
        background = list(range(n_fg, n_fg + req.bg_classes))
        classes += [BACKGROUND_NAME] if req.bg_classes == 1 else [f"{BACKGROUND_NAME}_{i}" for i in range(req.bg_classes)]
        objects += ([replace(o, class_id=background[0]) for o in stored_background] if store is not None
                    else background_objects(data, req.bg_per_image, background[0], seed=req.seed))
    _check_usable(data, objects)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loaded = load_encoder(req.encoder)
    spec = loaded.spec
    graph = encoder_graph(loaded)
    fp = fingerprint(graph, spec.preprocess)
    cache = (EmbeddingCache(req.cache_dir, spec.encoder_type, spec.model_id, fp, req.embed.precision, req.embed.engine)
             if req.cache_dir and store is None else None)
    everything = objects + holdout
    if store is not None:
        store.require(EncoderIdentity.from_spec(spec, fp), req.embed)
        run = store.extraction(everything, spec.embedding_dim)
    else:
        run = extract([o.image for o in everything], [o.box for o in everything], graph, spec.preprocess,
                      spec.embedding_dim, req.embed, cache, scratch=req.cache_dir or req.out.parent,
                      progress=req.progress)
    for path, why in run.failures:  # strict mode raises here, naming the image
        data.report.skip("unreadable image", path, f"skipped with its objects: {why}")
    for i, why in run.bad_crops:
        data.report.skip("box too small to crop", everything[i].source, f"skipped: {why}")
    keep, keep_holdout = run.ok[:len(objects)], run.ok[len(objects):]
    emb = run.emb[:len(objects)][keep] if not keep.all() else run.emb[:len(objects)]
    holdout_emb = np.asarray(run.emb[len(objects):][keep_holdout])
    objects = [o for o, k in zip(objects, keep) if k]
    _check_usable(data, objects)
    labels = np.array([o.class_id for o in objects], dtype=np.int64)
    if len(background) > 1:
        labels = _assign_background(emb, labels, background, req.seed)
        objects = [o if o.class_id == c else replace(o, class_id=int(c)) for o, c in zip(objects, labels)]
    timings["embed"] = time.perf_counter() - t0

    groups = [str(o.image) for o in objects]
    train_idx, test_idx, split = _split(data, objects, req)
    sub_train, sub_val = group_split([groups[i] for i in train_idx], req.val_size, req.seed)
    split += (f"; validation (early stopping, calibration, OOD threshold): {req.val_size:.0%} of the training "
              f"images, drawn by source image (seed {req.seed})")
    return PreparedData(spec, fp, data, classes, background, objects, emb, labels, holdout_emb,
                        train_idx[sub_train], train_idx[sub_val], test_idx, cache, timings,
                        {**_described(run), **({"store": str(store.path.resolve())} if store is not None else {})}, split)


def _split(data: YoloDataset, objects: list[LabelledObject], req: TrainRequest) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows to train on (fit + validation), rows the report measures, and one sentence saying how they were chosen.

    A split data.yaml declares (``train:``/``val:``) is honoured: val's images are the test split. Otherwise
    whole source images are held out at random, so no image's crops sit on both sides.
    """
    if not data.declared:
        train_idx, test_idx = group_split([str(o.image) for o in objects], req.test_size, req.seed)
        return train_idx, test_idx, (f"split: no train/val declared in data.yaml, so {req.test_size:.0%} of the "
                                     f"source images are held out as the test split (seed {req.seed})")
    train_idx, test_idx = declared_split([o.image for o in objects], data.declared)
    folders = {k: ", ".join(str(f.relative_to(data.root.resolve())) if f.is_relative_to(data.root.resolve())
                            else str(f) for f in v) for k, v in data.declared.items()}
    left = len(objects) - len(train_idx) - len(test_idx)
    for side, rows, least in (("train", train_idx, 2), ("val", test_idx, 1)):  # 2: validation takes one of train's
        images = len({str(objects[i].image) for i in rows})
        if images < least:
            raise DatasetError(f"{data.root / 'data.yaml'}: {side}: {folders[side]} holds {images} usable labelled "
                               f"image(s); a declared split needs at least {least} there")
    return train_idx, test_idx, (f"split: as data.yaml declares it: train on {folders['train']} "
                                 f"({len(train_idx)} crops), test on val: {folders['val']} ({len(test_idx)} crops)"
                                 + (f", {left} crops in neither folder left out" if left else ""))


def _described(run: Extraction) -> dict[str, object]:
    """What meta.json and the report record of how the embeddings were computed."""
    return {"device": run.device, "engine": run.engine, "precision": run.precision, "min_cosine_to_fp32": run.min_cosine,
            "crops": int(run.ok.sum()), "unreadable_images": len(run.failures),
            "crops_per_s": round(float(run.ok.sum()) / run.seconds, 1) if run.seconds else None}


def train_from_yolo(req: TrainRequest, prepared: PreparedData | None = None) -> TrainOutcome:
    """Train, calibrate and save one head (and its report); ``prepared`` reuses embeddings and splits."""
    p = prepared or prepare(req)
    timings = dict(p.timings)
    with _timed(timings, "fit"):
        head_config = head_config_for(req.train, p.spec.embedding_dim, len(p.classes), req.hidden)
        fit = fit_head(p.emb[p.fit_idx], p.labels[p.fit_idx], p.emb[p.val_idx], p.labels[p.val_idx], head_config,
                       req.train, background=p.background, device=str(p.extraction.get("device", "cpu")))
    with _timed(timings, "ood"):
        attach_ood(fit.head, fit_ood(p.emb[p.fit_idx], p.labels[p.fit_idx], len(p.classes)))
        threshold = choose_threshold(ood_scores(fit.head, p.emb[p.val_idx]), p.labels[p.val_idx], p.background,
                                     req.ood_quantile)
    drift = _drift_reference(p, fit.head, threshold, req)
    with _timed(timings, "evaluate"):
        test = _evaluate(p, fit.head, threshold)
    metrics = {**test.metrics, "temperature": fit.temperature, "epochs": fit.epochs_run,
               "n_train": len(p.fit_idx), "n_val": len(p.val_idx), "n_test": len(p.test_idx)}

    meta = HeadMeta(
        name=req.name,
        encoder=EncoderIdentity.from_spec(p.spec, p.fingerprint),
        encoder_untrained=p.spec.is_tiny,
        classes=p.classes,
        background_indices=p.background,
        head_type=head_config.head_type,
        head_config=head_config.to_dict(),
        temperature=fit.temperature,
        metrics={k: v for k, v in metrics.items() if k not in ("confusion", "per_class")},
        extra={"profile": req.profile, "recipe": dict(describe(req.train)), "embedding": p.extraction, "split": p.split,
               "log_priors": fit.log_priors,
               "class_weights": fit.class_weights, "drift_reference": drift.to_dict(ood_figures=False),
               "reliability_test": reliability(test.probs, p.labels[p.test_idx]),
               "ood": {"method": "mahalanobis_shared_cov", "threshold_on": "foreground validation crops"},
               **fit.record(), **({"selection": dict(req.selection)} if req.selection is not None else {})},
        ood_threshold=threshold,
        ood_quantile=req.ood_quantile,
    )
    artifact = save_head(req.out, meta, fit.head)
    lines = [p.data.report.summary(), *p.data.report.problems[:20], p.split]
    if p.cache is not None:
        lines.append(p.cache.stats.summary())
        metrics["cache_hit_rate"] = p.cache.stats.hit_rate
    report = None
    if req.report_dir is not None:
        from headserve.train.report import write_report

        with _timed(timings, "report"):
            report = write_report(req.report_dir, meta, metrics, test.probs, test.uncalibrated,
                                  p.labels[p.test_idx], timings, p.data.report)
        lines.append(f"report: {report}")
    return TrainOutcome(artifact, meta, metrics, [p.objects[i] for i in p.test_idx], p.labels[p.test_idx], lines,
                        timings, np.asarray(p.emb[p.test_idx]), report, test.outputs)


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Record the wall time of one training phase under ``phase`` (the report's timing table)."""
    t0 = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - t0


def _drift_reference(p: PreparedData, head: ServingHead, threshold: float, req: TrainRequest) -> DriftReference:
    """What the head answers on the labelled objects of validation: the yardstick of `headserve drift`.

    Objects only, as the threshold: production sends a detector's boxes, not training's random background crops.
    """
    objects_val = p.val_idx[foreground(p.labels[p.val_idx], p.background)]
    with torch.no_grad():
        val_probs = head(torch.from_numpy(p.emb[objects_val]))[1].numpy()
    return reference_from_validation(val_probs, ood_scores(head, p.emb[objects_val]), p.classes, threshold,
                                     req.ood_quantile, seed=req.seed)


@dataclass
class _TestAnswers:
    """What the head answered on the test split, and the metrics the report and meta.json keep."""

    outputs: dict[str, np.ndarray]  # every score output by name, (T, ...)
    probs: np.ndarray  # (T, C) calibrated
    uncalibrated: np.ndarray  # (T, C) softmax of the logits before the temperature
    metrics: dict[str, Any]


def _evaluate(p: PreparedData, head: ServingHead, threshold: float) -> _TestAnswers:
    """Foreground metrics, calibration before and after, and OOD figures on the test split."""
    labels = p.labels[p.test_idx]
    with torch.no_grad():
        outputs = head(torch.from_numpy(p.emb[p.test_idx]))
    answers = {name: t.numpy() for name, t in zip(SCORE_OUTPUTS, outputs)}
    uncalibrated = torch.softmax(outputs[0], dim=-1).numpy()
    probs = outputs[1].numpy()
    metrics = classification_metrics(probs, labels, p.classes, p.background)
    metrics["ece_before"] = expected_calibration_error(uncalibrated, labels)
    metrics["ece_after"] = expected_calibration_error(probs, labels)
    test_ood = ood_scores(head, p.emb[p.test_idx])
    # Known objects above the threshold: what the threshold promises to keep near 1 - quantile. Background crops
    # are a catch-all of scenes and score high by design, so they are counted apart, not mixed in.
    fg = foreground(labels, p.background)
    if fg.any():
        metrics["ood_flagged_test_fg"] = float((test_ood[fg] > threshold).mean())
    if not fg.all():
        metrics["ood_flagged_test_background"] = float((test_ood[~fg] > threshold).mean())
    if len(p.holdout_emb):  # held-out crops against known foreground crops, and against every known crop
        unknown = ood_scores(head, p.holdout_emb)
        metrics["ood_auroc"] = ood_auroc(test_ood[foreground(labels, p.background)], unknown)
        metrics["ood_auroc_all"] = ood_auroc(test_ood, unknown)
    return _TestAnswers(answers, probs, uncalibrated, metrics)


def _hold_out(data: YoloDataset, name: str) -> tuple[list[str], list[LabelledObject], list[LabelledObject]]:
    """Drop class ``name`` from training (re-indexing the rest); its objects become OOD examples."""
    if name not in data.names:
        raise DatasetError.bad_value("ood_holdout", repr(name),
                                     f"not a class of {data.root}; hold out one of {data.names}")
    gone = data.names.index(name)
    classes = [n for n in data.names if n != name]
    kept = [LabelledObject(o.image, o.class_id - (o.class_id > gone), o.box, o.source)
            for o in data.objects if o.class_id != gone]
    return classes, kept, [o for o in data.objects if o.class_id == gone]


def _assign_background(emb: np.ndarray, labels: np.ndarray, background: list[int], seed: int) -> np.ndarray:
    """Split background crops into len(background) classes by k-means on their embeddings (fixed seed),
    so each background class is one visually coherent kind of scene rather than an arbitrary share."""
    from sklearn.cluster import KMeans

    idx = np.flatnonzero(labels == background[0])
    k = min(len(background), len(idx))
    labels = labels.copy()
    if k > 1:
        clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(emb[idx])
        labels[idx] = np.asarray(background)[clusters]
    return labels


def _check_labelled(data: YoloDataset) -> None:
    """A dataset whose label files give no box at all is refused here, for every head kind alike."""
    if data.objects:
        return
    labels = data.root / "labels"
    files = len(list(labels.rglob("*.txt"))) if labels.is_dir() else 0
    kinds = {k: n for k, n in data.report.counts.items() if k != "empty class"}  # every class is empty here
    skipped = "; skipped: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) if kinds else ""
    raise DatasetError(f"{data.root}: no labelled objects: {len(data.images)} image(s) under images/ but no label "
                       f"line gives a box ({files} label file(s) under labels/{skipped}); label the images: "
                       "labels/<image name>.txt with one 'class cx cy w h' line per object")


def _check_usable(data: YoloDataset, objects: list[LabelledObject]) -> None:
    if not objects:
        raise DatasetError(f"{data.root}: no usable labelled objects; check labels/ and the summary: {data.report.summary()}")
    if len({str(o.image) for o in objects}) < 5:
        raise DatasetError(f"{data.root}: fewer than 5 labelled images; a grouped train/val/test split needs more")
