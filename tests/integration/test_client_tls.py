"""Mutual TLS against the real tritonserver, with the test-only certificates in tests/assets/client/tls."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from headserve.client import ConnectionOptions, HeadClient, ServerUnavailableError
from headserve.server import LocalTriton, ServerConfig

pytestmark = pytest.mark.integration
TLS = Path(__file__).resolve().parents[1] / "assets" / "client" / "tls"


def _mtls(**overrides) -> ConnectionOptions:
    values = dict(root_certificates=str(TLS / "ca.pem"), private_key=str(TLS / "client.key"),
                  certificate_chain=str(TLS / "client.pem"), timeout_s=5.0, retries=0)
    values.update(overrides)
    return ConnectionOptions(**values)


class TlsTriton(LocalTriton):
    """The local server with gRPC behind mutual TLS; readiness is polled over TLS too."""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            try:
                with HeadClient(self.grpc_url, _mtls(timeout_s=2.0)) as client:
                    if client._client.is_server_ready(client_timeout=2.0):
                        return
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError("TLS tritonserver never became ready:\n" + self.log_tail())

    def _probe_models(self) -> None:
        """The start-up probe speaks plaintext gRPC; the plain `triton` fixture serves and probes the same models."""


@pytest.fixture(scope="module")
def tls_triton(two_family_repo):
    """The DINOv3 head these tests call (and the CLIP one) behind mutual TLS; fewer models start than ``local_repo``'s."""
    args = ("--grpc-use-ssl-mutual=true", f"--grpc-server-cert={TLS / 'server.pem'}",
            f"--grpc-server-key={TLS / 'server.key'}", f"--grpc-root-cert={TLS / 'ca.pem'}")
    with TlsTriton(ServerConfig(repository=two_family_repo, extra_args=args)) as server:
        yield server


def test_mutual_tls_client_gets_the_same_probabilities_as_over_plain_grpc(tls_triton, triton, trained_heads):
    from headserve.train.dataset import load_crop

    head = trained_heads["dinov3:tiny"]
    crops = [load_crop(o) for o in head.outcome.test_objects[:6]]
    with HeadClient(tls_triton.grpc_url, _mtls()) as secure, HeadClient(triton.grpc_url) as plain:
        np.testing.assert_allclose(secure.probabilities(head.name, crops), plain.probabilities(head.name, crops),
                                   atol=1e-6)


def test_plaintext_client_is_refused_by_the_tls_server_as_unavailable(tls_triton, trained_heads):
    with HeadClient(tls_triton.grpc_url, ConnectionOptions(timeout_s=3.0, retries=1, backoff_s=0.05)) as c:
        with pytest.raises(ServerUnavailableError):
            c.info(trained_heads["dinov3:tiny"].name)


def test_client_without_a_certificate_is_refused_under_mutual_tls(tls_triton, trained_heads):
    options = ConnectionOptions(root_certificates=str(TLS / "ca.pem"), timeout_s=3.0, retries=0)
    with HeadClient(tls_triton.grpc_url, options) as c:
        with pytest.raises(ServerUnavailableError, match="TLS settings match the server's"):
            c.info(trained_heads["dinov3:tiny"].name)

