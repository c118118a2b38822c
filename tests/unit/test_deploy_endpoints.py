"""How `headserve export --server` turns its endpoints into replica addresses, before any gRPC is spoken."""

from __future__ import annotations

import pytest

from headserve.export.errors import RolloutError
from headserve.export.server_load import ReplicaResult, expand_endpoint, require_all_ready, resolve_dns


def test_a_host_and_port_is_one_replica_as_written():
    assert expand_endpoint("10.0.0.7:8001") == ["10.0.0.7:8001"]


def test_a_dns_endpoint_becomes_one_address_per_record_through_the_real_resolver():
    assert resolve_dns("localhost", 8001) and all(a in ("127.0.0.1", "::1") for a in resolve_dns("localhost", 8001))
    expanded = expand_endpoint("dns:///localhost:8001")
    assert "127.0.0.1:8001" in expanded and set(expanded) <= {"127.0.0.1:8001", "[::1]:8001"}


def test_ipv6_pod_addresses_are_bracketed_so_grpc_can_parse_them():
    assert expand_endpoint("dns:///svc:8001", resolver=lambda name, port: ["fd00::5", "10.1.2.3"]) == \
        ["[fd00::5]:8001", "10.1.2.3:8001"]


@pytest.mark.parametrize("endpoint, message", [
    ("headserve-triton", "has no port"),
    ("dns:///headserve-triton", "must be dns:///NAME:PORT"),
    ("dns:///:8001", "must be dns:///NAME:PORT"),
    ("dns:///no-such-service.invalid:8001", "does not resolve"),
])
def test_a_bad_endpoint_is_refused_naming_it_and_the_fix(endpoint, message):
    with pytest.raises(RolloutError, match=message) as caught:
        expand_endpoint(endpoint)
    assert endpoint in str(caught.value)


def test_a_service_with_no_ready_pod_is_an_error_not_an_empty_rollout():
    with pytest.raises(RolloutError, match="resolves to no address"):
        expand_endpoint("dns:///svc:8001", resolver=lambda name, port: [])


def test_one_failed_replica_makes_the_rollout_an_error_that_lists_each_failure():
    results = [ReplicaResult("a:8001", (), None), ReplicaResult("b:8001", (), "unreachable"),
               ReplicaResult("c:8001", (), "refused")]
    with pytest.raises(RolloutError, match=r"2 of 3 replica\(s\): b:8001: unreachable; c:8001: refused"):
        require_all_ready(results)
    require_all_ready(results[:1])  # all ready: no error
