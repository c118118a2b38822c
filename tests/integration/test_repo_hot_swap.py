"""Hot swap on the real tritonserver: a new head version goes live under a steady request stream."""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support.waiting import CALL_TIMEOUT_S, join, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD = "swap"


def run_cli(*argv: str) -> int:
    """The export CLI's own parser, as `headserve` registers it."""
    from headserve.app import export as export_cli

    parser = argparse.ArgumentParser(prog="headserve")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def expected_probs(artifact: Path, pixels: np.ndarray) -> np.ndarray:
    """In-process PyTorch: the tiny encoder graph, then the artifact's calibrated head."""
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.head import load_head

    meta, head = load_head(artifact)
    with torch.no_grad():
        emb = encoder_graph(load_encoder(get_encoder(meta.encoder.name)))(torch.from_numpy(pixels))
        return head(emb)[1].numpy()


def test_a_new_head_version_goes_live_while_requests_keep_succeeding(tmp_path):
    import tritonclient.grpc as grpcclient

    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head
    from headserve.export.server_load import load_on_server
    from headserve.server import LocalTriton, ServerConfig

    spec = get_encoder("clip:tiny")
    v1 = write_example_head(spec, ExampleHead(HEAD, seed=1), tmp_path / "v1")
    v2 = write_example_head(spec, ExampleHead(HEAD, seed=2), tmp_path / "v2")
    repo = tmp_path / "repo"
    export_head(v1, repo, "local")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want_v1, want_v2 = expected_probs(v1, pixels), expected_probs(v2, pixels)
    assert np.abs(want_v1 - want_v2).max() > 1e-2  # the two versions are distinguishable

    answers: list[tuple[float, np.ndarray]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    with LocalTriton(ServerConfig(repository=repo, model_control="explicit")) as server:
        def stream() -> None:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(pixels)
            out = [grpcclient.InferRequestedOutput("probs")]
            while not stop.is_set():
                try:
                    started = time.monotonic()  # a call sent before the swap ended may be answered by version 1
                    result = client.infer(HEAD, [inp], outputs=out, client_timeout=CALL_TIMEOUT_S)
                    answers.append((started, result.as_numpy("probs")))
                except BaseException as exc:  # every failure is a test failure, collected for the message
                    failures.append(exc)
                time.sleep(0.01)
            client.close()

        worker = threading.Thread(target=stream)
        worker.start()
        try:
            wait_until(lambda: len(answers) >= 5 or bool(failures), "five answers from version 1")
            written = export_head(v2, repo, "local")
            assert [(w.name, w.version) for w in written] == [(f"{HEAD}_head", 2), (HEAD, 2)]
            loaded = load_on_server(server.grpc_url, [w.name for w in written])
            swapped_at = time.monotonic()
            assert [(m.name, m.version) for m in loaded] == [(f"{HEAD}_head", "2"), (HEAD, "2")]
            wait_until(lambda: sum(t > swapped_at for t, _ in answers) >= 5 or bool(failures),
                       "five answers sent after the swap")
        finally:
            stop.set()
            join(worker)

        # The CLI path: `headserve export head ARTIFACT --repo DIR --server URL` swaps back to the first weights.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert run_cli("export", "head", str(v1), "--repo", str(repo), "--server", server.grpc_url) == 0
        assert f"ready on {server.grpc_url}: {HEAD} version 3" in printed.getvalue()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
            inp.set_data_from_numpy(pixels)
            got = client.infer(HEAD, [inp], client_timeout=CALL_TIMEOUT_S).as_numpy("probs")
            assert np.abs(got - want_v1).max() < 1e-5

    assert failures == []
    before = [p for t, p in answers[:5]]
    after = [p for t, p in answers if t > swapped_at]
    assert all(np.abs(p - want_v1).max() < 1e-5 for p in before)
    assert len(after) >= 5 and all(np.abs(p - want_v2).max() < 1e-5 for p in after)
    # Every answer in between is one version or the other, never a mix or an error.
    assert all(min(np.abs(p - want_v1).max(), np.abs(p - want_v2).max()) < 1e-5 for _, p in answers)
