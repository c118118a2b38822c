"""Connection options: which failures are retried, and gRPC channel arguments laid over tritonclient's own."""

import pytest

from headserve.client import (
    BadInputError,
    ConnectionOptions,
    DeadlineExceededError,
    ServerUnavailableError,
)


def test_only_unavailable_is_retried_with_doubling_backoff_until_retries_run_out():
    options = ConnectionOptions(retries=2, backoff_s=0.1)
    down = ServerUnavailableError("down")
    assert [options.retry_delay(down, a) for a in range(3)] == [0.1, 0.2, None]
    assert options.retry_delay(DeadlineExceededError("slow"), 0) is None


def test_channel_options_override_tritonclients_defaults_and_keep_the_rest():
    import tritonclient.grpc as grpcclient

    options = ConnectionOptions(channel_options=[["grpc.lb_policy_name", "round_robin"],
                                                 ("grpc.keepalive_time_ms", 10_000)])
    args = dict(options.client_kwargs()["channel_args"])
    assert args["grpc.lb_policy_name"] == "round_robin" and args["grpc.keepalive_time_ms"] == 10_000
    # tritonclient replaces its defaults with channel_args: the message limit must survive the override.
    assert args["grpc.max_receive_message_length"] == grpcclient.MAX_GRPC_MESSAGE_SIZE
    assert "channel_args" not in ConnectionOptions().client_kwargs()  # none given: tritonclient's own


@pytest.mark.parametrize("option, match", [
    (("lb_policy_name", "round_robin"), "is not a .*grpc.<name>.* pair"),
    (("grpc.lb_policy_name",), "is not a .*grpc.<name>.* pair"),
    (("grpc.keepalive_time_ms", 1.5), "has value 1.5"),
])
def test_channel_options_refuse_what_grpc_would_not_take(option, match):
    with pytest.raises(BadInputError, match=match):
        ConnectionOptions(channel_options=(option,))
