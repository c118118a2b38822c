"""The fleet's rollout on real tritonservers: one export command loads a new head version on every replica.

Two servers in explicit model control read one repository, as replicas of the Kubernetes Deployment
read one volume. They listen on the same port at two loopback addresses (127.0.0.1 and 127.0.0.2),
the way pods behind a headless Service share a port at their own IPs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re

import numpy as np
import pytest
from support.waiting import CALL_TIMEOUT_S

from headserve.errors import HeadserveError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD = "fleet"
ADDRESSES = ("127.0.0.1", "127.0.0.2")


def run_cli(*argv: str) -> tuple[int | None, str, HeadserveError | None]:
    """The export CLI's own parser, as `headserve` registers it: exit code (None when it raised), stdout, error."""
    from headserve.app import export as export_cli

    parser = argparse.ArgumentParser(prog="headserve")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            return args.func(args), printed.getvalue(), None
        except HeadserveError as exc:  # headserve's main prints it and exits 2
            return None, printed.getvalue(), exc


def probs(url: str, pixels: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        return client.infer(HEAD, [inp], client_timeout=CALL_TIMEOUT_S).as_numpy("probs")


def served_version(url: str, model: str) -> str:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        return max(client.get_model_metadata(model).versions, key=int)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """Two explicit-mode replicas on one repository holding version 1 of the head; yields (repo, artifacts, urls)."""
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig, free_port

    tmp = tmp_path_factory.mktemp("fleet")
    spec = get_encoder("clip:tiny")
    artifacts = [write_example_head(spec, ExampleHead(HEAD, seed=seed), tmp / f"v{seed}") for seed in (1, 2)]
    repo = tmp / "repo"
    export_head(artifacts[0], repo, "local")
    port = free_port(ADDRESSES[0])
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(LocalTriton(ServerConfig(repository=repo, host=host, grpc_port=port,
                                                                model_control="explicit")))
                   for host in ADDRESSES]
        yield repo, artifacts, [s.grpc_url for s in servers]


def test_one_export_command_puts_the_new_head_on_every_replica_and_reports_each(fleet):
    repo, (v1, v2), urls = fleet
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    before = [probs(u, pixels) for u in urls]
    assert np.abs(before[0] - before[1]).max() < 1e-6  # both replicas serve version 1

    code, out, error = run_cli("export", "head", str(v2), "--repo", str(repo),
                               "--server", urls[0], "--server", urls[1])
    assert error is None and code == 0, out
    for url in urls:
        assert f"ready on {url}: {HEAD}_head version 2" in out and f"ready on {url}: {HEAD} version 2" in out
        assert f"replica {url}: ok" in out
        assert served_version(url, HEAD) == served_version(url, f"{HEAD}_head") == "2"
    assert "rollout: 2 of 2 replica(s) ready" in out
    after = [probs(u, pixels) for u in urls]
    assert np.abs(after[0] - after[1]).max() < 1e-6
    assert np.abs(after[0] - before[0]).max() > 1e-2  # the new weights answer, not the old ones


def test_a_replica_that_cannot_load_fails_the_command_while_the_others_still_get_the_new_version(fleet, tmp_path):
    from headserve.server import LocalTriton, ServerConfig, free_port

    repo, (v1, v2), urls = fleet
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: a replica that went away
    # A real server in the default model control (none): it refuses load requests.
    with LocalTriton(ServerConfig(repository=repo, model_control="none")) as frozen:
        code, out, error = run_cli("export", "head", str(v1), "--repo", str(repo),
                                   "--server", urls[0], "--server", frozen.grpc_url, "--server", dead)
        assert served_version(frozen.grpc_url, HEAD) != "3"
    assert code is None and error is not None
    assert f"replica {urls[0]}: ok" in out and served_version(urls[0], HEAD) == "3"
    assert re.search(rf"replica {re.escape(frozen.grpc_url)}: failed: .*explicit", out), out
    assert re.search(rf"replica {re.escape(dead)}: failed: .*unreachable", out), out
    assert "rollout: 1 of 3 replica(s) ready" in out
    message = str(error)
    assert "2 of 3 replica(s)" in message and frozen.grpc_url in message and dead in message
    # The replica left out catches up when the command is re-run against it: loading is idempotent.
    code, out, error = run_cli("export", "head", str(v1), "--repo", str(repo), "--server", urls[1])
    assert error is None and served_version(urls[1], HEAD) == "4"


def test_a_headless_service_name_reaches_every_replica_including_one_that_joins_during_the_rollout(fleet):
    from headserve.export.server_load import rollout

    repo, (v1, v2), urls = fleet
    port = int(urls[0].rpartition(":")[2])
    service = "headserve-triton-grpc.headserve.svc.cluster.local"
    answers = [[ADDRESSES[0]], list(ADDRESSES)]  # the second replica turns ready between two lookups
    lookups: list[tuple[str, int]] = []

    def cluster_dns(name: str, p: int) -> list[str]:
        # Stands in for the cluster's DNS, which this machine does not have: the addresses a headless
        # Service resolves to are exactly its ready pods', which is what this returns.
        lookups.append((name, p))
        return answers[min(len(lookups), len(answers)) - 1]

    newest = max((p.name for p in (repo / f"{HEAD}_head").iterdir() if p.name.isdigit()), key=int)
    results = rollout([f"dns:///{service}:{port}"], [f"{HEAD}_head"], resolver=cluster_dns)
    assert lookups == [(service, port), (service, port)]
    assert [(r.address, r.ok) for r in results] == [(urls[0], True), (urls[1], True)]
    assert [r.loaded[0].version for r in results] == [newest, newest]  # each replica serves the newest version


def test_a_replica_serving_another_version_than_the_export_wrote_counts_as_failed(fleet):
    from headserve.export.server_load import rollout

    repo, _, urls = fleet
    current = served_version(urls[0], HEAD)
    (result,) = rollout([urls[0]], [HEAD], expected={HEAD: int(current) + 1})
    assert not result.ok and f"{HEAD} version {current} (expected {int(current) + 1})" in result.error
