"""How headserve joins Ray (headserve/ray_cluster.py): refusals before any Ray work."""

from __future__ import annotations

import sys

import pytest

from headserve.errors import ConfigError, HeadserveError
from headserve.ray_cluster import check_address, connect, import_ray


@pytest.mark.parametrize("address", ["data/yolo", "crop.png"])
def test_a_path_taken_for_the_ray_address_is_refused_naming_it(address):
    with pytest.raises(ConfigError, match=rf"Ray address '{address}' is not auto, local, HOST:PORT"):
        connect(address)


@pytest.mark.parametrize("address", [None, "", "auto", "local", "10.0.0.1:6379", "ray://head:10001"])
def test_addresses_ray_understands_pass_the_check(address):
    check_address(address)


def test_a_missing_ray_is_one_line_naming_the_extra_that_installs_it(monkeypatch):
    # Ray is installed here; a None entry in sys.modules makes its import fail as on a client-only install.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(HeadserveError, match=r'running on Ray needs Ray .*pip install "headserve\[ray\]"'):
        import_ray()
