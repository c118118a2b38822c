"""Which listening sockets share a server's port: its address or a wildcard, never another loopback address."""

from __future__ import annotations

import socket

from headserve.processes import listening_inodes


def test_listeners_count_only_on_the_servers_address_or_a_wildcard():
    with socket.socket() as two, socket.socket() as one, socket.socket(socket.AF_INET6) as anywhere:
        two.bind(("127.0.0.2", 0))
        two.listen()
        port = two.getsockname()[1]
        one.bind(("127.0.0.1", port))  # the same port on another loopback address: a second replica
        one.listen()
        assert len(listening_inodes(port)) == 2
        assert len(listening_inodes(port, "127.0.0.1")) == 1 and len(listening_inodes(port, "127.0.0.2")) == 1
        assert len(listening_inodes(port, "localhost")) == 1
        anywhere.bind(("::", 0))  # a wildcard listener is reachable through every address
        anywhere.listen()
        assert len(listening_inodes(anywhere.getsockname()[1], "127.0.0.1")) == 1


def test_a_server_gets_distinct_free_ports_and_never_one_it_was_given():
    from headserve.server import LocalTriton, ServerConfig, free_ports

    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert set(free_ports(5, taken=ports[:3])).isdisjoint(ports[:3])
    server = LocalTriton(ServerConfig(repository=".", grpc_port=ports[0]))  # not started: ports are chosen here
    assert server.grpc_port == ports[0]
    assert len({server.grpc_port, server.http_port, server.metrics_port}) == 3
