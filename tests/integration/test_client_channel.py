"""gRPC channel options reach the real channel: a load-balancing policy answers as before, a limit is enforced."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from headserve.client import (
    AsyncHeadClient,
    BadInputError,
    ClientError,
    ConnectionOptions,
    HeadClient,
    MessageTooLargeError,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crops(trained_heads):
    from headserve.train.dataset import load_crop

    return [load_crop(o) for o in trained_heads["clip:tiny"].outcome.test_objects]


def test_a_round_robin_client_answers_as_the_default_client(trained_heads, crops, triton):
    head = trained_heads["clip:tiny"].name
    balanced = ConnectionOptions(channel_options=(("grpc.lb_policy_name", "round_robin"),))
    with HeadClient(triton.grpc_url, balanced) as rr, HeadClient(triton.grpc_url) as plain:
        np.testing.assert_allclose(rr.probabilities(head, crops), plain.probabilities(head, crops), atol=1e-6)


@pytest.mark.parametrize("transport", ["sync", "asyncio"])
@pytest.mark.parametrize("option, limit, message", [
    ("grpc.max_receive_message_length", 64, r"the answer is \d+ bytes, over this client's own limit of 64 bytes"),
    ("grpc.max_send_message_length", 2000, r"the request is \d+ bytes, over this client's own limit of 2000 bytes"),
])
def test_a_message_limit_given_as_a_channel_option_is_enforced_loudly_as_the_clients_own(
        trained_heads, crops, triton, transport, option, limit, message):
    """gRPC says RESOURCE_EXHAUSTED for the client's own limit too: it is reported as the client's limit (a bad
    input the caller fixes), naming the option and how to raise it, not as a server error to look up in its log."""
    head = trained_heads["clip:tiny"].name
    tiny = ConnectionOptions(retries=0, channel_options=((option, limit),))

    async def run() -> None:
        async with AsyncHeadClient(triton.grpc_url, tiny) as c:
            await c.probabilities(head, crops)

    with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED") as caught:
        if transport == "sync":
            with HeadClient(triton.grpc_url, tiny) as c:
                c.probabilities(head, crops)
        else:
            asyncio.run(run())
    assert isinstance(caught.value, MessageTooLargeError) and isinstance(caught.value, BadInputError)
    text = str(caught.value)
    assert re.search(message, text), text
    assert f"ConnectionOptions(channel_options=(('{option}', N),))" in text and "see the server log" not in text


def _head_requests(url: str, model: str) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, client_timeout=10)
    return sum(int(s.inference_stats.success.count) for s in stats.model_stats)


def test_round_robin_spreads_a_long_lived_clients_requests_over_every_address_and_pick_first_does_not(
        trained_heads, crops, triton, two_family_repo, tmp_path):
    """Two real servers behind one target (what a headless Service's DNS name resolves to): with ROUND_ROBIN
    (`classify --round-robin`) both answer; with gRPC's default every request of a channel goes to one."""
    from headserve.client.options import ROUND_ROBIN
    from headserve.server import LocalTriton, ServerConfig

    head = trained_heads["clip:tiny"].name
    few = crops[:2]
    with LocalTriton(ServerConfig(repository=two_family_repo)) as second:  # serves the same head, fewer models
        urls = (triton.grpc_url, second.grpc_url)
        target = "ipv4:" + ",".join(urls)  # one name, two addresses, as gRPC's resolver hands them to the policy

        def spread(run: Callable[[], None], requests: int) -> tuple[int, int]:
            """Requests each server answered during ``run``, once the ``requests`` sent are all counted."""
            before = [_head_requests(u, head) for u in urls]
            run()
            deadline = time.monotonic() + 20  # Triton counts an ensemble request just after answering it
            grown = [_head_requests(u, head) - b for u, b in zip(urls, before)]
            while sum(grown) < requests and time.monotonic() < deadline:
                time.sleep(0.1)
                grown = [_head_requests(u, head) - b for u, b in zip(urls, before)]
            assert sum(grown) == requests, grown
            return grown[0], grown[1]

        def calls(options: ConnectionOptions) -> None:
            with HeadClient(target, options) as client:
                for _ in range(20):  # one request per call: 2 crops fit the head's max batch size
                    client.probabilities(head, few)

        assert 0 in spread(lambda: calls(ConnectionOptions()), 20)  # pick_first: one server took all 20
        balanced = spread(lambda: calls(ConnectionOptions(channel_options=ROUND_ROBIN)), 20)
        assert min(balanced) >= 5, balanced  # round robin: both servers answered a share

        # The command users run: one process, one channel, its crops in requests of the head's max batch size.
        with HeadClient(triton.grpc_url) as client:
            max_batch = client.info(head).max_batch_size
        files = [str(tmp_path / f"c{i}.png") for i in range(len(few))]
        for crop, path in zip(few, files):
            crop.save(path)
        listed = files * (4 * max_batch)  # 8 * max_batch crops: 8 requests

        def classify(*flags: str) -> None:
            run = subprocess.run([sys.executable, "-m", "headserve.app", "classify", "--head", head, "--url", target,
                                  *flags, *listed], capture_output=True, text=True, timeout=180)
            assert run.returncode == 0, run.stderr[-2000:]
            assert len(run.stdout.splitlines()) == len(listed)

        requests = -(-len(listed) // max_batch)
        assert 0 in spread(classify, requests)
        assert min(spread(lambda: classify("--round-robin"), requests)) >= 1
