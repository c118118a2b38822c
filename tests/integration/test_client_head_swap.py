"""A long-lived HeadClient across head swaps on the real tritonserver: no crop labelled with stale names.

Version 2 of the head is version 1 with its classes in another order (weights permuted with them), so
every crop has the same true class *name* under both versions while its probability *index* moves. A
client that decoded version-2 probabilities with version-1 names would label every crop wrongly.

Every call is checked, those in flight during the swap too: each ensemble version is pinned to the head
version whose classes it publishes, and the head keeps its previous version loaded while the swap runs,
so an answer is never the new head's probabilities under the old classes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from support.heads import permuted_head
from support.waiting import join, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD = "reorder"
PERMUTATION = (1, 2, 3, 0)  # new class i is old class PERMUTATION[i]: no class keeps its index


def true_labels(artifact: Path, pixels: np.ndarray) -> list[str]:
    """In-process PyTorch: the tiny encoder graph, then the artifact's head; top-1 class names."""
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.head import load_head

    meta, head = load_head(artifact)
    with torch.no_grad():
        probs = head(encoder_graph(load_encoder(get_encoder(meta.encoder.name)))(torch.from_numpy(pixels)))[1]
    return [meta.classes[i] for i in probs.numpy().argmax(1)]


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head

    tmp = tmp_path_factory.mktemp("swap_heads")
    spec = get_encoder("clip:tiny")
    v1 = write_example_head(spec, ExampleHead(HEAD, seed=1), tmp / "v1")
    wide = ExampleHead(HEAD, seed=3, classes=("cat", "dog", "fox", "owl", "background"))
    return {"v1": v1, "v2": permuted_head(v1, tmp / "v2", PERMUTATION), "wide": write_example_head(spec, wide, tmp / "w")}


def _crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_a_long_lived_client_never_labels_a_crop_with_the_names_of_a_swapped_out_version(heads, tmp_path):
    from headserve.client import HeadClient
    from headserve.export.pipeline import export_head
    from headserve.export.server_load import load_on_server
    from headserve.server import LocalTriton, ServerConfig

    pixels = _crops(8, seed=0)
    want = true_labels(heads["v1"], pixels)
    assert want == true_labels(heads["v2"], pixels)  # same names: the permutation moves indices only
    v1_classes, v2_classes = load_classes(heads["v1"]), load_classes(heads["v2"])
    stale = [v1_classes[v2_classes.index(name)] for name in want]  # version-2 indices read with version-1 names
    assert all(s != w for s, w in zip(stale, want))  # so a stale client would mislabel every crop

    repo = tmp_path / "repo"
    export_head(heads["v1"], repo, "local")
    answers: list[tuple[float, str, list[str]]] = []  # (call started, version read after it, top-1 names)
    failures: list[BaseException] = []
    stop = threading.Event()
    crops = list(pixels)
    with LocalTriton(ServerConfig(repository=repo, model_control="explicit")) as server:
        with HeadClient(server.grpc_url) as client:
            assert client.info(HEAD).version == "1"

            def stream() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        preds = client.classify(HEAD, crops)
                        answers.append((started, client.info(HEAD).version, [p.label for p in preds]))
                    except BaseException as exc:  # every failure is a test failure, collected for the message
                        failures.append(exc)
                    time.sleep(0.005)

            worker = threading.Thread(target=stream)
            worker.start()
            try:
                wait_until(lambda: len(answers) >= 5 or bool(failures), "five answers from version 1")
                swap_began = time.monotonic()
                written = export_head(heads["v2"], repo, "local")
                load_on_server(server.grpc_url, [w.name for w in written])  # what `export head --server` does
                swapped_at = time.monotonic()
                wait_until(lambda: sum(t > swapped_at for t, _, _ in answers) >= 5 or bool(failures),
                           "five answers sent after the swap")
            finally:
                stop.set()
                join(worker)
            assert failures == []
            # Every call, in flight during the swap included, names each crop by its true class.
            mislabelled = [(t, v, labels) for t, v, labels in answers if labels != want]
            assert mislabelled == [], f"{len(mislabelled)} of {len(answers)} answers mislabelled, e.g. {mislabelled[:2]}"
            assert client.info(HEAD).version == "2" and list(client.info(HEAD).classes) == v2_classes
            before = [(v, labels) for t, v, labels in answers if t < swap_began]
            after = [(v, labels) for t, v, labels in answers if t > swapped_at]
            assert len(before) >= 5 and len(after) >= 5
            # Every call outside the swap names each crop by its true class: the long-lived client read the new
            # version's classes (a client that kept version 1's would mislabel every crop after the swap).
            assert all(v == "1" and labels == want for v, labels in before), before[:2]
            wrong = [(v, labels) for v, labels in after if v != "2" or labels != want]
            assert wrong == [], f"{len(wrong)} of {len(after)} answers after the swap mislabelled, e.g. {wrong[:2]}"

            # A swap to a head with another class count: the cached 4-class view is not used to index 5 classes.
            written = export_head(heads["wide"], repo, "local")
            load_on_server(server.grpc_url, [w.name for w in written])
            preds = client.classify(HEAD, crops)
            assert client.info(HEAD).version == "3" and len(client.info(HEAD).classes) == 5
            assert [p.label for p in preds] == true_labels(heads["wide"], pixels)
            assert all(p.probs.shape == (5,) for p in preds)


def test_a_client_refuses_answers_when_the_head_keeps_changing_after_one_re_read(heads, tmp_path, monkeypatch):
    from headserve.client import HeadChangedError, HeadClient
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig

    repo = tmp_path / "repo"
    export_head(heads["v1"], repo, "local")
    export_head(heads["v2"], repo, "local")  # versions 1 and 2 on disk; the server loads the newest only
    with LocalTriton(ServerConfig(repository=repo)) as server, HeadClient(server.grpc_url) as client:
        current = client.info(HEAD)
        assert current.version == "2"
        # A client that believes version 1 (what it read before a swap) is sent to the served version on its
        # first re-read: version 1's answer cannot come back, and no crop gets version-1 names.
        swapped_out = replace(current, version="1",
                              served=replace(current.served, classes=tuple(load_classes(heads["v1"]))))
        client._info[HEAD] = swapped_out
        preds = client.classify(HEAD, list(_crops(3, seed=1)))
        assert client.info(HEAD).version == "2"
        assert [p.label for p in preds] == true_labels(heads["v2"], _crops(3, seed=1))
        # The asyncio client follows the same rule.
        import asyncio

        from headserve.client import AsyncHeadClient

        async def async_labels() -> tuple[str, list[str]]:
            async with AsyncHeadClient(server.grpc_url) as aclient:
                aclient._info[HEAD] = swapped_out
                apreds = await aclient.classify(HEAD, list(_crops(3, seed=1)))
                return (await aclient.info(HEAD)).version, [p.label for p in apreds]

        assert asyncio.run(async_labels()) == ("2", true_labels(heads["v2"], _crops(3, seed=1)))
        # A repository that changes again between the re-read and the resend cannot be produced on cue with a
        # real server, so the re-read (from the real server) is made to decode as the swapped-out view again:
        # the client must refuse.
        client._info[HEAD] = swapped_out
        monkeypatch.setattr("headserve.client.core.head_info_from_config", lambda *args: swapped_out)
        with pytest.raises(HeadChangedError, match=r"head 'reorder' on .* changed while answering.*version 1"):
            client.classify(HEAD, list(_crops(3, seed=1)))


def load_classes(artifact: Path) -> list[str]:
    from headserve.artifact import load_meta

    return list(load_meta(artifact).classes)
