"""Shared fixtures: a real-image YOLO dataset, heads trained on the tiny encoder twins, and a
repository served by the real tritonserver. Session-scoped: they are built once per test run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.twins import TINY_ENCODERS, head_name

# One OpenMP thread for torch in this process and in every command a test starts (they inherit it), set before
# anything imports torch. The tests' models are tiny twins and heads of a few thousand weights: a second thread
# only adds a barrier per operation, and on a loaded 2-core runner each barrier waits for a descheduled thread
# (a 40-epoch head fit measured 0.2 s of CPU with one thread, 3 s with two). tritonserver's stubs already get 1
# (headserve.server.server_env). A value set outside the run is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class TrainedHead:
    encoder: str
    name: str
    outcome: object  # headserve.train.pipeline.TrainOutcome

    @property
    def artifact(self) -> Path:
        return self.outcome.artifact


@pytest.fixture()
def long_tailed_embeddings() -> tuple:
    """(x, y): four long-tailed Gaussian clusters (80, 40, 12, 6 points, 16-dim), L2-normalised like encoder
    embeddings; fresh arrays for each test."""
    import numpy as np

    rng = np.random.default_rng(0)
    n_per = (80, 40, 12, 6)
    centres = rng.standard_normal((len(n_per), 16)) * 1.5
    x = np.concatenate([centres[c] + rng.standard_normal((n, 16)) for c, n in enumerate(n_per)]).astype(np.float32)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)]).astype(np.int64)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headserve.train.synth import SynthConfig, build_digits_dataset

    return build_digits_dataset(tmp_path_factory.mktemp("digits"), SynthConfig(num_images=80))


@pytest.fixture(scope="session")
def trained_heads(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedHead]:
    """One small MLP head per encoder family's tiny twin, keyed by encoder name."""
    from headserve.encoders import get_encoder
    from headserve.train.pipeline import TrainRequest, train_from_yolo
    from headserve.train.trainer import TrainConfig

    out = tmp_path_factory.mktemp("heads")
    heads = {}
    for enc in TINY_ENCODERS:
        name = head_name(enc)
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
def two_family_repo(local_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``local_repo`` cut to the CLIP and DINOv3 twins' models (ensemble, encoder, head), copied.

    For a test that starts a server of its own to kill a stub, fail a start, or stand beside ``triton``: two
    families show that as five do, and each start loads 4 python stubs instead of 10. A test that counts or
    serves every family keeps ``local_repo``.
    """
    import shutil

    from headserve.contract import encoder_model_name, head_model_name

    repo = tmp_path_factory.mktemp("two_families") / "model_repository"
    for encoder in ("clip:tiny", "dinov3:tiny"):
        for model in (head_name(encoder), head_model_name(head_name(encoder)), encoder_model_name(encoder)):
            shutil.copytree(local_repo / model, repo / model)
    return repo


@pytest.fixture(scope="session")
def triton(local_repo: Path):
    """The real tritonserver from the nvidia-pytriton wheel, serving ``local_repo`` on loopback."""
    from headserve.server import LocalTriton, ServerConfig

    with LocalTriton(ServerConfig(repository=local_repo)) as server:
        yield server


Counts = dict[str, tuple[int, int]]  # model name -> (successful requests, inferences)


class ServerCounts:
    """How much each model's request and inference counts grew since this object was made.

    Triton records an ensemble request's statistics when the ensemble releases the request, after
    its response is sent (core's ensemble_scheduler.cc), so a read right after the client returns
    can miss the last request (seen in CI under load: 2 of 3 requests counted). ``grown`` therefore
    waits for the growth the caller expects and then for the counts to hold still.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = self._read()

    def _read(self) -> Counts:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.url) as client:
            stats = client.get_inference_statistics(as_json=True)["model_stats"]
        return {s["name"]: (int(s["inference_stats"]["success"].get("count", 0)), int(s.get("inference_count", 0)))
                for s in stats}

    def _growth(self, counts: Counts) -> Counts:
        return {m: (r - self.before.get(m, (0, 0))[0], i - self.before.get(m, (0, 0))[1])
                for m, (r, i) in counts.items()}

    def grown(self, model: str, inferences: int, quiet_s: float = 0.3, timeout_s: float = 30.0) -> Counts:
        """Every model's growth, once ``model`` ran at least ``inferences`` more and nothing changed for
        ``quiet_s``. Counts only grow, so that is the final tally. The caller still asserts on it: a
        server that never gets there returns what it has after ``timeout_s``, and the assertion fails."""
        deadline = time.monotonic() + timeout_s
        counts = self._read()
        while time.monotonic() < deadline:
            if self._growth(counts).get(model, (0, 0))[1] >= inferences:
                time.sleep(quiet_s)
                again = self._read()
                if again == counts:
                    break
                counts = again
            else:
                time.sleep(0.05)
                counts = self._read()
        return self._growth(counts)


@pytest.fixture(scope="session")
def server_counts() -> Callable[[str], ServerCounts]:
    """Build a :class:`ServerCounts` for a server's gRPC url."""
    return ServerCounts


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (``ray.cluster_utils.Cluster``), this process connected to it.

    Started once, as Ray's testing guide advises: a start costs seconds. The head has two CPUs. A test that needs
    a second node adds one (``ray_cluster.add_node(num_cpus=1)``) and removes it when done; a process under test
    (``headserve embed --ray ADDRESS``) joins with ``ray_cluster.address``.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
