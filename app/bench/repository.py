"""The served repository every benchmark and the soak build: heads exported into one local repository, variants
of its encoder (another engine, no batching, one instance per core, fp32 pixels) each with an ensemble, served
by the local tritonserver.

Heads are untrained examples (``headserve.export.example``: the serving cost of a head does not depend on its
weights) or trained on the synthetic digits (where a benchmark needs decisions and crops that mean something).
Encoders are the tiny twins or real architectures with random weights (``headserve.standins``: the compute of
trained ones). Everything goes through the library's own export path, as ``headserve export head`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from headserve.encoders import EncoderSpec, get_encoder

WEIGHTS_DIR = Path(".headserve-cache/standins")  # where the random-weight checkpoints are kept between runs


@dataclass(frozen=True)
class EncoderRounds:
    """Which encoders a serving benchmark measures, and how long it spends on each configuration."""

    encoders: tuple[str, ...] = ("clip:ViT-B-32", "dinov3:vits16")  # real architectures, random weights
    batch: int = 32  # crops per batched request and in-process call
    rounds: int = 3  # interleaved rounds: the median and range are over these
    requests: int = 3  # batch requests per client, configuration and round
    single_requests: int = 64  # batch-1 requests per round at the batch-1 mode's concurrency, all clients together
    concurrency: int = 16  # clients of the batch-1 modes
    weights_dir: Path = WEIGHTS_DIR  # where the random-weight checkpoints are kept

    @property
    def single_per_client(self) -> int:
        """Batch-1 requests each client of the batch-1 modes sends per round."""
        return max(1, self.single_requests // self.concurrency)


# `--smoke`: the tiny twin and one short round; shows a serving benchmark runs, measures nothing real.
SMOKE_ROUNDS: dict[str, Any] = {"encoders": ("clip:tiny",), "rounds": 1, "requests": 1, "single_requests": 16,
                                "concurrency": 4}


def stand_in(encoder: str, weights_dir: Path = WEIGHTS_DIR, layers: int | None = None) -> EncoderSpec:
    """The encoder to measure: a tiny twin as registered, a real architecture with random weights."""
    spec = get_encoder(encoder)
    if spec.is_tiny and layers is None:
        return spec
    from headserve.standins import write_random_weights

    return write_random_weights(encoder, weights_dir, layers=layers)


@dataclass
class EncoderUnderTest:
    """An encoder as the serving benchmarks measure it: its spec, its torch graph (every core) and a batch."""

    spec: EncoderSpec
    graph: Any  # headserve.backbones' EncoderGraph: uint8 (B, S, S, 3) -> (B, D) embeddings
    pixels: np.ndarray  # (batch, S, S, 3) uint8, seed 0

    @classmethod
    def load(cls, encoder: str, batch: int, weights_dir: Path = WEIGHTS_DIR) -> "EncoderUnderTest":
        import torch

        from headserve.backbones import encoder_graph, load_encoder

        spec = stand_in(encoder, weights_dir)
        torch.set_num_threads(os.cpu_count() or 1)
        size = spec.preprocess.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        return cls(spec, encoder_graph(load_encoder(spec)), pixels)


class BenchRepository:
    """A local model repository under ``root``/repo, filled through the library's export path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"

    def example_head(self, spec: EncoderSpec, name: str, seed: int = 0, **export: Any) -> Path:
        """An untrained example head on ``spec`` exported (with its encoder, the first time); its artifact."""
        from headserve.export.example import ExampleHead, write_example_head
        from headserve.export.pipeline import export_head

        artifact = write_example_head(spec, ExampleHead(name, seed=seed), self.root / name)
        export_head(artifact, self.repo, "local", **export)
        return artifact

    def trained_head(self, dataset: Path, encoder: str, name: str, prompts: bool = False) -> Any:
        """A head trained on ``dataset`` (MLP (64,), 10 epochs) and exported, with its CLIP prompt model when
        ``prompts``; the training outcome (meta, held-out crops)."""
        from headserve.export.pipeline import export_head
        from headserve.train.pipeline import TrainRequest, train_from_yolo
        from headserve.train.trainer import TrainConfig

        outcome = train_from_yolo(TrainRequest(dataset=dataset, encoder=get_encoder(encoder), out=self.root / name,
                                               name=name, hidden=(64,), train=TrainConfig(epochs=10)))
        export_head(outcome.artifact, self.repo, "local")
        if prompts:
            from headserve.export.prompts import add_prompt_model

            classes = outcome.meta.classes
            add_prompt_model(self.repo, name, [f"a photo of the {c}" for c in classes], list(range(len(classes))))
        return outcome

    def encoder_files(self, spec: EncoderSpec) -> dict[str, Path]:
        """The exported encoder's version files (graph, weights, fingerprint), for variants of it."""
        from headserve.export.repository import encoder_model_name

        version = self.repo / encoder_model_name(spec.name) / "1"
        return {p.name: p for p in version.iterdir() if p.is_file() and p.name != "model.py"}

    def encoder_variant(self, spec: EncoderSpec, suffix: str, files: Mapping[str, Path] | None = None,
                        parameters: Mapping[str, str] | None = None, options: Any = None, **desc: Any) -> str:
        """``<encoder>_<suffix>``: the exported encoder's description with ``desc`` changed (``encoder_desc``'s
        keywords), its parameters updated by ``parameters``, serving ``files`` (default: the encoder's own)."""
        from headserve.export.model_config import Runtime, parameters_of, parse
        from headserve.export.repository import encoder_desc, encoder_model_name, publish_version

        base = encoder_model_name(spec.name)
        params = {**parameters_of(parse((self.repo / base / "config.pbtxt").read_text())), **(parameters or {})}
        variant = encoder_desc(f"{base}_{suffix}", spec, params, **desc)
        publish_version(self.repo / variant.name, variant, Runtime.LOCAL,
                        self.encoder_files(spec) if files is None else files, options=options)
        return variant.name

    def head_on(self, head: str, encoder_model: str, suffix: str) -> str:
        """``<head>_<suffix>``: an ensemble of ``head``'s record and head model on another encoder model."""
        from headserve.export.model_config import Runtime
        from headserve.export.repository import read_served_head, write_ensemble

        served = read_served_head(self.repo, head, "a benchmark variant")[0]
        name = f"{head}_{suffix}"
        write_ensemble(self.repo, replace(served, name=name), encoder_model, f"{head}_head", Runtime.LOCAL)
        return name

    def serve(self, startup_timeout_s: float | None = None) -> Any:
        """The local tritonserver on this repository (a context manager that always shuts it down); real-size
        encoders take longer to load than ``ServerConfig``'s default start-up deadline."""
        from headserve.server import LocalTriton, ServerConfig

        config = ServerConfig(repository=self.repo)
        return LocalTriton(config if startup_timeout_s is None else replace(config, startup_timeout_s=startup_timeout_s))
