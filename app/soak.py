"""`headserve soak`: a bounded soak on loopback that stops by itself (``make soak``).

The flags become a ``SoakConfig``; building, serving and driving are headserve.soak's. Exits 1 when any
request failed or the server or a stub died, so a CI step can run it as is.
"""

from __future__ import annotations

import argparse

from headserve.soak import SoakConfig, run_soak

EXIT_SOAK_FAILED = 1  # some request failed, or the server or a stub was not alive at the end


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="drive two example heads on a local tritonserver with many clients for a "
                                    "fixed budget; prints requests, errors, latency and the server's memory")
    p.add_argument("--clients", type=int, default=SoakConfig.clients, help="concurrent clients, one channel each")
    p.add_argument("--seconds", type=float, default=SoakConfig.seconds, help="stop after this long")
    p.add_argument("--requests", type=int, default=SoakConfig.requests,
                   help="or after this many requests in all (0: no count limit)")
    p.add_argument("--batch", type=int, default=SoakConfig.batch, help="crops per request")
    p.set_defaults(func=_soak)


def _soak(args: argparse.Namespace) -> int:
    config = SoakConfig(clients=args.clients, seconds=args.seconds, requests=args.requests, batch=args.batch)
    result = run_soak(config)
    print("\n".join(result.lines(config)))
    return 0 if not result.errors and result.healthy_at_end else EXIT_SOAK_FAILED
