"""Ask running Tritons (``--model-control-mode=explicit``) to load what was just exported: the fleet's rollout.

Triton reloads a model in place: the new version is loaded next to the old one, and the old one is
unloaded only after the new one is ready, so requests keep being answered across the swap.

Models are asked for in reverse order, ensembles before the heads they call: loading an ensemble makes
Triton load its composing models with it, while loading a head first makes Triton reload the ensemble
that depends on it from the new version directory but with the ensemble's *old* config, so for a moment
(and for a client that reads it then, until the next swap) version N+1 publishes version N's classes.

A fleet is several replicas reading one repository. ``rollout`` loads the new versions on every
replica at once and reports each: ready with the expected version, or failed with the reason. A
replica is named by ``HOST:PORT``, or all replicas at once by ``dns:///NAME:PORT`` (gRPC's own
syntax), where NAME is a Kubernetes headless Service: its DNS name resolves to one address per ready
pod. A pod that is still starting is not in DNS yet, but loads every model's newest version at
start-up (``--load-model=*``), so it cannot come up on the old head; the name is resolved once more
after the first round, and replicas that appeared meanwhile are loaded too.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from headserve.errors import HeadserveError, RepositoryError
from headserve.export.errors import RolloutError

DNS_SCHEME = "dns:///"  # an endpoint that names every address a DNS name resolves to


@dataclass(frozen=True)
class LoadedModel:
    name: str  # Triton model name
    version: str  # the version Triton reports ready
    seconds: float  # from the load request until the model was ready


@dataclass(frozen=True)
class ReplicaResult:
    """What one replica did with the rollout."""

    address: str  # HOST:PORT the replica was reached at
    loaded: tuple[LoadedModel, ...]  # the models that became ready there, in load order
    error: str | None  # why it failed; None when every model is ready at the expected version

    @property
    def ok(self) -> bool:
        return self.error is None


Resolver = Callable[[str, int], list[str]]


def resolve_dns(name: str, port: int) -> list[str]:
    """Every address ``name`` resolves to, in a stable order (a headless Service: one per ready pod)."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def expand_endpoint(endpoint: str, resolver: Resolver = resolve_dns) -> list[str]:
    """``HOST:PORT`` as it is; ``dns:///NAME:PORT`` as one ``ADDRESS:PORT`` per address of NAME."""
    if not endpoint.startswith(DNS_SCHEME):
        if not endpoint.rpartition(":")[2].isdigit():
            raise RolloutError(f"server address {endpoint!r} has no port: write HOST:PORT (the gRPC port, 8001 in "
                               f"deploy/), or {DNS_SCHEME}SERVICE:PORT for every replica behind a headless Service")
        return [endpoint]
    name, _, port = endpoint[len(DNS_SCHEME):].rpartition(":")
    if not name or not port.isdigit():
        raise RolloutError(f"server address {endpoint!r} must be {DNS_SCHEME}NAME:PORT, e.g. "
                           f"{DNS_SCHEME}headserve-triton-grpc.headserve.svc.cluster.local:8001")
    try:
        addresses = resolver(name, int(port))
    except OSError as exc:
        raise RolloutError(f"server address {endpoint!r}: {name} does not resolve ({exc}); check the Service name and "
                           "namespace, and run the exporter where cluster DNS answers (a Job in the cluster, or "
                           "give each pod's POD_IP:PORT instead)") from exc
    if not addresses:
        raise RolloutError(f"server address {endpoint!r}: {name} resolves to no address, so no replica is ready; "
                           "check `kubectl get endpointslices` for the Service")
    return [_host_port(a, int(port)) for a in addresses]


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
                client.load_model(name)  # no deadline: Triton answers when the load ends (TensorRT builds take minutes)
            except InferenceServerException as exc:
                if exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                    raise
                hint = ("start it with --model-control-mode=explicit"
                        if "explicit" in str(exc) or "polling" in str(exc) else "see the server log for the reason")
                raise RepositoryError(f"Triton at {url} did not load {name}: {exc.message()}; {hint}.") from exc
            while not client.is_model_ready(name, client_timeout=timeout_s):
                if time.monotonic() - t0 > timeout_s:
                    raise RepositoryError(f"{name} was not ready on {url} after {timeout_s:.0f}s; "
                                          "see the server log for its load error.")
                time.sleep(0.2)
            meta = client.get_model_metadata(name, client_timeout=timeout_s)
            done.append(LoadedModel(name, max(meta.versions, key=int) if meta.versions else "", time.monotonic() - t0))
    except InferenceServerException as exc:
        raise RepositoryError(f"Triton at {url} is unreachable ({exc.message()}); check the server address "
                              "(host:gRPC port).") from exc
    finally:
        client.close()
    return done[::-1]  # in the order asked for


def _load_replica(address: str, models: Sequence[str], expected: Mapping[str, str], timeout_s: float) -> ReplicaResult:
    try:
        loaded = tuple(load_on_server(address, models, timeout_s))
    except HeadserveError as exc:
        return ReplicaResult(address, (), str(exc))
    stale = [f"{m.name} version {m.version} (expected {expected[m.name]})" for m in loaded
             if m.name in expected and m.version != expected[m.name]]
    if stale:
        return ReplicaResult(address, loaded, "serves " + ", ".join(stale) + ": its view of the repository is "
                             "stale (a volume cache?) or another version policy is configured; re-run when it "
                             "sees the new version directory")
    return ReplicaResult(address, loaded, None)


def rollout(endpoints: Sequence[str], models: Sequence[str], expected: Mapping[str, str] | None = None,
            timeout_s: float = 120.0, resolver: Resolver = resolve_dns) -> list[ReplicaResult]:
    """Load ``models`` on every replica the endpoints name, all replicas at once; one result per replica.

    ``expected`` maps a model name to the version the export just wrote: a replica that reports another
    version ready has failed, because it would keep answering with the old head.
    """
    expected = {k: str(v) for k, v in (expected or {}).items()}
    results: dict[str, ReplicaResult] = {}
    for _round in range(2):  # the second round catches replicas that joined a headless Service meanwhile
        addresses = list(dict.fromkeys(a for e in endpoints for a in expand_endpoint(e, resolver)))
        todo = [a for a in addresses if a not in results]
        if not todo:
            break
        with ThreadPoolExecutor(max_workers=min(32, len(todo))) as pool:
            for result in pool.map(lambda a: _load_replica(a, models, expected, timeout_s), todo):
                results[result.address] = result
        if not any(e.startswith(DNS_SCHEME) for e in endpoints):
            break
    return list(results.values())


def require_all_ready(results: Sequence[ReplicaResult]) -> None:
    """Raise one error naming every replica that failed, so the command exits non-zero."""
    failed = [r for r in results if not r.ok]
    if failed:
        raise RolloutError(
            f"the new version is not ready on {len(failed)} of {len(results)} replica(s): "
            + "; ".join(f"{r.address}: {r.error}" for r in failed)
            + ". Fix those replicas and re-run the same command: loading is idempotent, and replicas already "
            "on the new version stay there.")


def unload_on_server(url: str, models: Sequence[str], timeout_s: float = 60.0) -> list[str]:
    """Unload ``models`` (in order: dependents first) from a Triton in explicit model control.

    Triton unloads a model whose directory is gone already (it asks the server, not the disk); one it
    cannot unload raises naming it, so `repo remove` says that the server still answers with it.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    unloaded = []
    try:
        for name in models:
            try:
                client.unload_model(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                raise RepositoryError(f"Triton at {url} did not unload {name}: {exc.message()}; it may still answer "
                                      "with it: check the address (host:gRPC port), or restart it") from exc
            unloaded.append(name)
    finally:
        client.close()
    return unloaded
