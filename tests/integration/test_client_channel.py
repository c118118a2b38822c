"""gRPC channel options reach the real channel: a load-balancing policy answers as before, a limit is enforced."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from headserve.client import AsyncHeadClient, ClientError, ConnectionOptions, HeadClient

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
def test_a_receive_limit_given_as_a_channel_option_is_enforced_loudly(trained_heads, crops, triton, transport):
    head = trained_heads["clip:tiny"].name
    tiny = ConnectionOptions(retries=0, channel_options=(("grpc.max_receive_message_length", 64),))

    async def run() -> None:
        async with AsyncHeadClient(triton.grpc_url, tiny) as c:
            await c.probabilities(head, crops)

    with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED"):
        if transport == "sync":
            with HeadClient(triton.grpc_url, tiny) as c:
                c.probabilities(head, crops)
        else:
            asyncio.run(run())
