"""YOLO dataset -> embeddings -> head -> artifact: what `headserve train` runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headserve.artifact import HeadMeta, save_artifact
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.encoders import EncoderSpec
from headserve.head import HeadConfig
from headserve.train.dataset import LabelledObject, YoloDataset, background_objects, load_crop, read_yolo
from headserve.train.embed import embed_pixels, pixels_of
from headserve.train.metrics import classification_metrics, expected_calibration_error
from headserve.train.split import group_split
from headserve.train.trainer import TrainConfig, fit_head

BACKGROUND_NAME = "background"


@dataclass(frozen=True)
class TrainRequest:
    """One head to train."""

    dataset: Path  # YOLO dataset root
    encoder: EncoderSpec  # frozen encoder the embeddings come from
    out: Path  # artifact directory to write
    name: str = "head"  # head name (Triton model name)
    hidden: tuple[int, ...] = (256,)  # MLP widths; () trains logistic regression
    background: bool = True  # add a background class of random crops that overlap no box
    bg_per_image: int = 2  # background crops drawn per image
    test_size: float = 0.2  # fraction of source images held out for the report
    val_size: float = 0.2  # fraction of training images used for early stopping and calibration
    seed: int = 42  # split and background sampling seed
    strict: bool = False  # bad label lines raise instead of being skipped
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TrainOutcome:
    artifact: Path
    meta: HeadMeta
    metrics: dict[str, object]
    test_objects: list[LabelledObject]
    test_pixels: np.ndarray  # (N, S, S, 3) uint8, the held-out crops as the encoder sees them
    test_labels: np.ndarray
    report_lines: list[str]
    timings: dict[str, float]


def train_from_yolo(req: TrainRequest) -> TrainOutcome:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = read_yolo(req.dataset, strict=req.strict)
    classes = list(data.names)
    objects = list(data.objects)
    background: list[int] = []
    if req.background:
        background = [len(classes)]
        classes.append(BACKGROUND_NAME)
        objects += background_objects(data, req.bg_per_image, background[0], seed=req.seed)
    _check_usable(data, objects)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loaded = load_encoder(req.encoder)
    spec = loaded.spec
    graph = encoder_graph(loaded)
    pixels = pixels_of((load_crop(o) for o in objects), spec.preprocess)
    emb = embed_pixels(graph, pixels)
    labels = np.array([o.class_id for o in objects], dtype=np.int64)
    timings["embed"] = time.perf_counter() - t0

    groups = [str(o.image) for o in objects]
    train_idx, test_idx = group_split(groups, req.test_size, req.seed)
    sub_train, sub_val = group_split([groups[i] for i in train_idx], req.val_size, req.seed)
    fit_idx, val_idx = train_idx[sub_train], train_idx[sub_val]

    t0 = time.perf_counter()
    head_config = HeadConfig(in_dim=spec.embedding_dim, num_classes=len(classes), hidden=req.hidden,
                             activation="gelu", layernorm=bool(req.hidden), dropout=0.1 if req.hidden else 0.0,
                             standardize=False)
    fit = fit_head(emb[fit_idx], labels[fit_idx], emb[val_idx], labels[val_idx], head_config, req.train)
    timings["fit"] = time.perf_counter() - t0

    with torch.no_grad():
        logits, probs = fit.head(torch.from_numpy(emb[test_idx]))
    uncal = torch.softmax(logits, dim=-1).numpy()
    metrics = classification_metrics(probs.numpy(), labels[test_idx], classes, background)
    metrics["ece_before"] = expected_calibration_error(uncal, labels[test_idx])
    metrics["ece_after"] = expected_calibration_error(probs.numpy(), labels[test_idx])
    metrics["temperature"] = fit.temperature
    metrics["epochs"] = fit.epochs_run
    metrics["n_train"], metrics["n_val"], metrics["n_test"] = len(fit_idx), len(val_idx), len(test_idx)

    meta = HeadMeta(
        name=req.name,
        encoder_type=spec.encoder_type,
        encoder_model=spec.model_id,
        encoder_name=spec.name,
        encoder_pretrained=spec.pretrained,
        encoder_fingerprint=fingerprint(graph, spec.preprocess),
        encoder_untrained=spec.is_tiny,
        embedding_dim=spec.embedding_dim,
        classes=classes,
        background_indices=background,
        head_type=head_config.head_type,
        head_config=head_config.to_dict(),
        temperature=fit.temperature,
        preprocess=spec.preprocess.to_dict(),
        metrics={k: v for k, v in metrics.items() if k not in ("confusion", "per_class")},
    )
    tensors = {k: v.detach().cpu().numpy() for k, v in fit.head.state_dict().items()}
    artifact = save_artifact(req.out, meta, tensors)
    return TrainOutcome(artifact, meta, metrics, [objects[i] for i in test_idx], pixels[test_idx],
                        labels[test_idx], [data.report.summary(), *data.report.problems[:20]], timings)


def _check_usable(data: YoloDataset, objects: list[LabelledObject]) -> None:
    from headserve.errors import DatasetError

    if not objects:
        raise DatasetError(f"{data.root}: no usable labelled objects; check labels/ and the summary: {data.report.summary()}")
    if len({str(o.image) for o in objects}) < 5:
        raise DatasetError(f"{data.root}: fewer than 5 labelled images; a grouped train/val/test split needs more")
