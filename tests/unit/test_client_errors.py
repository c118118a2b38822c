"""The error hierarchy and connection options."""

import pytest
from tritonclient.utils import InferenceServerException

from headserve.client import (
    BadInputError,
    ClientError,
    ConnectionOptions,
    DeadlineExceededError,
    HeadClient,
    ModelNotReadyError,
    ServerSideError,
    ServerUnavailableError,
)
from headserve.client.errors import from_triton


@pytest.mark.parametrize("status, cls", [
    ("StatusCode.UNAVAILABLE", ServerUnavailableError),
    ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceededError),
    ("StatusCode.NOT_FOUND", ModelNotReadyError),
    ("StatusCode.INVALID_ARGUMENT", BadInputError),
    ("StatusCode.INTERNAL", ServerSideError),
    ("StatusCode.RESOURCE_EXHAUSTED", ServerSideError),  # the server's own limit: not the client's to raise
])
def test_grpc_status_maps_to_its_client_error(status, cls):
    err = from_triton(InferenceServerException("boom", status=status), "inference on 'h'")
    assert type(err) is cls and isinstance(err, ClientError)
    assert "inference on 'h' failed" in str(err) and "boom" in str(err)


def test_unavailable_is_retried_with_backoff_until_it_succeeds():
    # A transient UNAVAILABLE cannot be produced on demand from a real server, so the call raises
    # tritonclient's own exception twice before answering.
    attempts = []

    def flaky(timeout):
        attempts.append(timeout)
        if len(attempts) < 3:
            raise InferenceServerException("connection reset", status="StatusCode.UNAVAILABLE")
        return "ok"

    with HeadClient("127.0.0.1:1", ConnectionOptions(timeout_s=2.0, retries=3, backoff_s=0.01)) as client:
        assert client._call("probe", flaky) == "ok"
    assert attempts == [2.0, 2.0, 2.0]


def test_other_errors_are_not_retried_and_chain_the_tritonclient_error():
    calls = []

    def refused(timeout):
        calls.append(timeout)
        raise InferenceServerException("bad shape", status="StatusCode.INVALID_ARGUMENT")

    with HeadClient("127.0.0.1:1", ConnectionOptions(retries=3, backoff_s=0.01)) as client:
        with pytest.raises(BadInputError, match="bad shape") as info:
            client._call("probe", refused)
    assert len(calls) == 1 and isinstance(info.value.__cause__, InferenceServerException)


def test_options_refuse_half_mutual_tls_missing_files_and_unknown_compression(tmp_path):
    with pytest.raises(BadInputError, match="needs both private_key and certificate_chain"):
        ConnectionOptions(private_key=str(tmp_path / "k.pem"))
    with pytest.raises(BadInputError, match="root_certificates file .*ca.pem does not exist"):
        ConnectionOptions(root_certificates=str(tmp_path / "ca.pem"))
    with pytest.raises(BadInputError, match="compression 'zstd'"):
        ConnectionOptions(compression="zstd")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert ConnectionOptions(root_certificates=str(ca)).client_kwargs()["ssl"] is True
