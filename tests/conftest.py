"""Shared fixtures: a real-image YOLO dataset, heads trained on the tiny encoder twins, and a
repository served by the real tritonserver. Session-scoped: they are built once per test run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_ENCODERS = ("clip:tiny", "dinov3:tiny")


@dataclass
class TrainedHead:
    encoder: str
    name: str
    outcome: object  # headserve.train.pipeline.TrainOutcome

    @property
    def artifact(self) -> Path:
        return self.outcome.artifact


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headserve.train.synth import SynthConfig, build_digits_dataset

    return build_digits_dataset(tmp_path_factory.mktemp("digits"), SynthConfig(num_images=80))


@pytest.fixture(scope="session")
def trained_heads(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedHead]:
    """One small MLP head per tiny encoder family, keyed by encoder name."""
    from headserve.encoders import get_encoder
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.trainer import TrainConfig

    out = tmp_path_factory.mktemp("heads")
    heads = {}
    for enc in TINY_ENCODERS:
        name = "t_" + enc.replace(":", "_")
        outcome = train_from_yolo(TrainRequest(dataset=digits_dataset, encoder=get_encoder(enc), out=out / name,
                                               name=name, hidden=(64,), train=TrainConfig(epochs=40)))
        heads[enc] = TrainedHead(enc, name, outcome)
    return heads


@pytest.fixture(scope="session")
def local_repo(trained_heads: dict[str, TrainedHead], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local-runtime repository holding every trained head and its encoder."""
    from headserve.export.pipeline import export_head

    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    for head in trained_heads.values():
        export_head(head.artifact, repo, "local")
    return repo


@pytest.fixture(scope="session")
def triton(local_repo: Path):
    """The real tritonserver from the nvidia-pytriton wheel, serving ``local_repo`` on loopback."""
    from headserve.server import LocalTriton, ServerConfig

    with LocalTriton(ServerConfig(repository=local_repo)) as server:
        yield server



Counts = dict[str, tuple[int, int]]  # model name -> (successful requests, inferences)


@dataclass
class ServerCounts:
    """Request and inference counts from a server's statistics, read so that no request is missed."""

    url: str

    def now(self) -> Counts:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.url) as client:
            stats = client.get_inference_statistics(as_json=True)["model_stats"]
        return {s["name"]: (int(s["inference_stats"]["success"].get("count", 0)), int(s.get("inference_count", 0)))
                for s in stats}

    def settled(self, reached: Callable[[Counts], bool], quiet_s: float = 0.3, timeout_s: float = 30.0) -> Counts:
        """Counts once ``reached`` holds and nothing changed for ``quiet_s``.

        Triton records an ensemble request's statistics when the ensemble releases the request, after
        its response is sent (core's ensemble_scheduler.cc), so a read right after the client returns
        can miss the last request (seen in CI under load: 2 of 3 requests counted).
        Counts only grow, so waiting for the expected total and then for quiet gives the final
        numbers. The caller still asserts on them: a server that never reaches ``reached`` fails
        the caller's assertion after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        counts = self.now()
        while time.monotonic() < deadline:
            if reached(counts):
                time.sleep(quiet_s)
                again = self.now()
                if again == counts:
                    return counts
                counts = again
            else:
                time.sleep(0.05)
                counts = self.now()
        return counts


@pytest.fixture(scope="session")
def server_counts() -> Callable[[str], ServerCounts]:
    """Build a :class:`ServerCounts` for a server's gRPC url."""
    return ServerCounts
