"""Ask a running Triton (``--model-control-mode=explicit``) to load what was just exported.

Triton reloads a model in place: the new version is loaded next to the old one, and the old one is
unloaded only after the new one is ready, so requests keep being answered across the swap.

Models are asked for in reverse order, ensembles before the heads they call: loading an ensemble makes
Triton load its composing models with it, while loading a head first makes Triton reload the ensemble
that depends on it from the new version directory but with the ensemble's *old* config, so for a moment
(and for a client that reads it then, until the next swap) version N+1 publishes version N's classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from headserve.errors import RepositoryError


@dataclass(frozen=True)
class LoadedModel:
    name: str  # Triton model name
    version: str  # the version Triton reports ready
    seconds: float  # from the load request until the model was ready


def load_on_server(url: str, models: Sequence[str], timeout_s: float = 120.0) -> list[LoadedModel]:
    """Load (or reload) ``models`` in order and wait for each to be ready; raise naming the one that failed."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    done: list[LoadedModel] = []
    try:
        for name in reversed(models):  # dependents first: see the module docstring
            t0 = time.monotonic()
            try:
                client.load_model(name)
            except InferenceServerException as exc:
                hint = ("start it with --model-control-mode=explicit"
                        if "explicit" in str(exc) or "polling" in str(exc) else "see the server log for the reason")
                raise RepositoryError(f"Triton at {url} did not load {name}: {exc.message()}; {hint}.") from exc
            while not client.is_model_ready(name):
                if time.monotonic() - t0 > timeout_s:
                    raise RepositoryError(f"{name} was not ready on {url} after {timeout_s:.0f}s; "
                                          "see the server log for its load error.")
                time.sleep(0.2)
            meta = client.get_model_metadata(name)
            done.append(LoadedModel(name, max(meta.versions, key=int) if meta.versions else "", time.monotonic() - t0))
    except InferenceServerException as exc:
        raise RepositoryError(f"Triton at {url} is unreachable ({exc.message()}); check the --server address "
                              "(host:gRPC port).") from exc
    finally:
        client.close()
    return done[::-1]  # in the order asked for
