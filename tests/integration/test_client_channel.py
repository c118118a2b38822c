"""gRPC channel options reach the real channel: a load-balancing policy answers as before, a limit is enforced."""

from __future__ import annotations

import asyncio
import re

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
