"""How headserve joins Ray: one place for `embed --ray` and `classify --ray` (and the Ray benchmark).

Torch-free, and Ray is imported only when a command asks for it: Ray comes with its own extra
(``headserve[ray]``), and the client extra stays light.
"""

from __future__ import annotations

import os
from typing import Any

from headserve.errors import ConfigError, HeadserveError

# Ray addresses ray.init understands, besides HOST:PORT and ray://HOST:PORT (anything with a colon).
NAMED_ADDRESSES = ("auto", "local")


def check_address(address: str | None) -> None:
    """Refuse a cluster address that is a path swallowed by ``--ray``'s optional value (``--ray a.png``,
    ``embed --ray DATASET``): taken as an address it would fail inside Ray with a message about sockets."""
    if address is None or address == "" or address in NAMED_ADDRESSES or ":" in address:
        return
    raise ConfigError(f"Ray address {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT; when it is a "
                      "path, the Ray option took it for its address: name the address (local: a Ray started for "
                      "this run), or give the path before that option").about("address", address)


def import_ray() -> Any:
    """The ``ray`` module, or one line saying which extra installs it (the client extra stays light)."""
    try:
        import ray
        import ray.data  # noqa: F401  (every headserve use of Ray is Ray Data)
    except ImportError as exc:
        raise HeadserveError(f"running on Ray needs Ray ({exc}); install it with pip install \"headserve[ray]\"") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("" or None: RAY_ADDRESS, else a new local Ray), unless already joined.

    A local Ray starts without its dashboard's web server and modules, without usage reporting, and without
    forwarding worker logs to this terminal. What Ray still runs (docs/architecture.md, "The embeddings store"):
    the GCS and raylet, a minimal dashboard head, the dashboard and runtime-env agents, the log monitor, and
    Ray Data's stats, autoscaling-coordinator and actor-location actors.
    """
    check_address(address)
    ray = import_ray()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, configure_logging=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a Ray only this run uses
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
