"""A hot swap through the processes users run: `headserve serve` (supervision on) and `headserve export head`.

Version B of the head is version A with its six classes and every per-class row permuted, so both versions
give every crop the same class name -> probability map while every probability moves to another index. Two
threads with their own ``HeadClient`` classify 8 crops every 5 ms across swaps A -> B -> A; every answer is
compared with the map computed in-process from the artifacts. An answer decoded with the other version's
class names differs from that map, so this counts mislabelled crops exactly. The swap must also leave
nothing behind: no failed call, no model reloaded once it settled, nothing written into the repository.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from support.heads import permuted_head
from support.serving import Served
from support.serving import headserve_argv as _headserve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD = "swp"
CLASSES = ("a", "b", "c", "d", "e", "background")
ORDER = (1, 2, 3, 4, 5, 0)  # version B's class i is version A's class ORDER[i]: no class keeps its index
CALL_EVERY_S = 0.005


def _expected(artifact: Path, pixels: np.ndarray) -> list[dict[str, float]]:
    """In-process PyTorch: the tiny encoder graph, then the artifact's calibrated head; name -> probability."""
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.head import load_head

    meta, head = load_head(artifact)
    with torch.no_grad():
        probs = head(encoder_graph(load_encoder(get_encoder(meta.encoder.name)))(torch.from_numpy(pixels)))[1].numpy()
    return [dict(zip(meta.classes, map(float, row))) for row in probs]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head

    tmp = tmp_path_factory.mktemp("serve_swap")
    a = write_example_head(get_encoder("clip:tiny"), ExampleHead(HEAD, seed=1, classes=CLASSES), tmp / "A")
    return {"A": a, "B": permuted_head(a, tmp / "B", ORDER)}


def _files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


class Stream:
    """Two threads, each with its own HeadClient, classifying the same crops every 5 ms; every answer kept."""

    def __init__(self, url: str, pixels: np.ndarray, threads: int = 2) -> None:
        self.url, self.crops = url, list(pixels)
        self.answers: list[tuple[str, list[dict[str, float]]]] = []  # (version read, name -> probability per crop)
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        from headserve.client import HeadClient

        with HeadClient(self.url, timeout_s=30.0) as client:
            while not self._stop.is_set():
                try:
                    preds = client.classify(HEAD, self.crops, top_k=len(CLASSES))
                    self.answers.append((client.info(HEAD).version, [dict(p.top_k) for p in preds]))
                except Exception as exc:  # every failure counts against the swap: collected for the assertion
                    self.errors[type(exc).__name__] += 1
                    if len(self.examples) < 3:
                        self.examples.append(f"{type(exc).__name__}: {exc}")
                time.sleep(CALL_EVERY_S)

    def __enter__(self) -> "Stream":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a client thread did not finish within 60 s"

    def count(self) -> int:
        return len(self.answers)

    def wait_for_version(self, version: str, answers: int = 10, timeout_s: float = 60.0) -> None:
        """Until ``answers`` calls read ``version`` after this one, or fail after ``timeout_s``."""
        start, deadline = len(self.answers), time.monotonic() + timeout_s
        while sum(v == version for v, _ in self.answers[start:]) < answers:
            assert time.monotonic() < deadline, (f"no {answers} answers from version {version} within {timeout_s:.0f} s; "
                                                 f"errors {dict(self.errors)} {self.examples}")
            time.sleep(0.05)


def _mislabelled(answers: list[tuple[str, list[dict[str, float]]]], want: list[dict[str, float]]) -> list[tuple]:
    """Crops whose name -> probability map is not the in-process one (to 1e-5)."""
    bad = []
    for version, crops in answers:
        for i, (got, exp) in enumerate(zip(crops, want)):
            if got.keys() != exp.keys() or max(abs(got[k] - exp[k]) for k in exp) > 1e-5:
                bad.append((version, i, got))
    return bad


def _export(artifact: Path, repo: Path, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(_headserve("export", "head", str(artifact), "--repo", str(repo), *extra),
                          capture_output=True, text=True, timeout=timeout)


def _settled(served: Served, quiet_s: float = 4.0, timeout_s: float = 60.0) -> int:
    """Triton's load count once it held still for ``quiet_s``: a server reloading forever fails here."""
    deadline = time.monotonic() + timeout_s
    last, since = served.loads(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"Triton kept loading models for {timeout_s:.0f} s:\n{served.log()[-3000:]}"
        time.sleep(0.5)
        now = served.loads()
        if now != last:
            last, since = now, time.monotonic()
    return last


@pytest.mark.parametrize("mode", ["explicit", "poll"])
def test_a_hot_swap_through_serve_and_export_mislabels_no_crop_and_settles(versions, tmp_path, mode):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    want = _expected(versions["A"], pixels)
    assert _mislabelled([("B", _expected(versions["B"], pixels))], want) == []  # the same map under both versions
    repo = tmp_path / "repo"
    assert _export(versions["A"], repo).returncode == 0
    served = Served(repo, mode, tmp_path / "serve.log")
    try:
        server = ("--server", served.url) if mode == "explicit" else ()
        with Stream(served.url, pixels) as stream:
            stream.wait_for_version("1")
            for artifact, version in (("B", "2"), ("A", "3")):
                done = _export(versions[artifact], repo, *server)
                assert done.returncode == 0, done.stderr
                if server:
                    assert "rollout: 1 of 1 replica(s) ready" in done.stdout
                else:
                    assert f"serves {repo} in poll mode: it loads the new versions within 2s" in done.stdout
                stream.wait_for_version(version)
            settled = _settled(served)
            before_files = _files(repo)
            calls = stream.count()
            time.sleep(3.0)  # calls on the settled server
            assert stream.count() > calls
        assert served.loads() == settled, "a model was loaded again after the swap settled"
        assert _files(repo) == before_files, "serving wrote into the repository"
        assert served.proc.poll() is None, f"serve stopped by itself:\n{served.log()[-3000:]}"
    finally:
        code = served.stop()
    log = served.log()
    assert code == 0, log[-3000:]
    assert "reloading model" not in served.log_path.read_text(), "supervision took a replaced stub for a dead one"
    assert dict(stream.errors) == {}, stream.examples
    assert stream.count() > 100
    bad = _mislabelled(stream.answers, want)
    assert bad == [], f"{len(bad)} of {8 * stream.count()} crops mislabelled, e.g. {bad[:2]}"
    assert {v for v, _ in stream.answers} == {"1", "2", "3"}


def test_a_sigterm_to_the_exporter_mid_load_leaves_the_head_serving_and_the_server_settled(versions, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    want = _expected(versions["A"], pixels)
    repo = tmp_path / "repo"
    assert _export(versions["A"], repo).returncode == 0
    served = Served(repo, "explicit", tmp_path / "serve.log")
    try:
        with Stream(served.url, pixels) as stream:
            stream.wait_for_version("1")
            exporter = subprocess.Popen(
                _headserve("export", "head", str(versions["B"]), "--repo", str(repo), "--server", served.url),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while served.loads() <= 3:  # the start loaded encoder, head and ensemble; wait for the swap's load
                assert exporter.poll() is None or exporter.returncode == 0, exporter.communicate()[1]
                assert time.monotonic() < deadline, "the exporter never asked the server to load"
                time.sleep(0.01)
            exporter.send_signal(signal.SIGTERM)
            exporter.communicate(timeout=60)
            _settled(served)
            # The load the exporter asked for is the server's to finish; either version then answers, correctly.
            calls = stream.count()
            deadline = time.monotonic() + 30
            while stream.count() < calls + 20:
                assert time.monotonic() < deadline, f"no answers after the exporter was stopped: {stream.examples}"
                time.sleep(0.05)
        assert served.proc.poll() is None, served.log()[-3000:]
    finally:
        code = served.stop()
    assert code == 0
    assert "reloading model" not in served.log_path.read_text()
    assert dict(stream.errors) == {}, stream.examples
    assert _mislabelled(stream.answers, want) == []
    assert not [p for p in repo.rglob("*") if ".staging." in p.name], "a half-written version was left"


def test_export_head_without_server_flag_loads_the_new_version_on_the_serve_running_on_that_repository(
        versions, tmp_path):
    """The default path: `serve REPO` with no mode flag, then `export head --repo REPO` with no --server. Served
    as on a machine without a GPU (CUDA_VISIBLE_DEVICES empty): one line says so, and Triton's own lines go to
    its log file, not to the terminal."""
    import os

    from headserve.client import HeadClient
    from headserve.server import SERVE_STATE

    pixels = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    repo = tmp_path / "repo"
    assert _export(versions["A"], repo).returncode == 0
    served = Served(repo, None, tmp_path / "serve.log", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        assert f"`headserve export head` into {repo} loads the new version here" in served.says
        assert (repo / SERVE_STATE).is_file()
        with HeadClient(served.url, timeout_s=30.0) as client:
            assert client.info(HEAD).version == "1" and client.info(HEAD).classes == CLASSES
            done = _export(versions["B"], repo)
            assert done.returncode == 0, done.stderr
            assert f"(pid {served.proc.pid}, gRPC {served.url}) serves {repo}: loading the new versions" in done.stdout
            assert f"ready on {served.url}: {HEAD} version 2" in done.stdout
            assert "rollout: 1 of 1 replica(s) ready" in done.stdout
            client.classify(HEAD, list(pixels))  # answered by version 2: the client re-reads the head on the swap
            assert client.info(HEAD).version == "2"
            assert client.info(HEAD).classes == tuple(CLASSES[i] for i in ORDER)
    finally:
        code = served.stop()
    assert code == 0, served.log()[-3000:]
    assert not (repo / SERVE_STATE).exists(), "serve left its state file behind"
    said = served.log_path.read_text()
    assert said.count("headserve serve: no GPU: serving on CPU\n") == 1
    assert f"headserve serve: tritonserver's log: {served.triton_log_path}\n" in said
    assert not re.search(r"^[IWE]\d{4} ", said, re.MULTILINE), f"Triton's own lines reached the terminal:\n{said}"
    assert "Started GRPCInferenceService" in served.triton_log()
    assert "Waiting for in-flight requests to complete" in served.triton_log()
    # With no server on the repository any more, export writes version 3 and contacts nothing.
    done = _export(versions["A"], repo)
    assert done.returncode == 0 and "loading the new versions" not in done.stdout and "rollout" not in done.stdout
