"""`headserve classify --ray`: many crops classified by a fleet of client actors on Ray Data (no torch is imported).

Each actor holds one ``HeadClient`` (its own gRPC channel) and sends its batches to the Triton service that
serves the head, as `classify` does from one process: the server runs the ensemble, the client decides
(``client/decision.py``), so an answer here is the served answer by construction, with the version that gave it.
Ray spreads the crops' decoding and the requests over the cluster's CPUs; the GPUs stay in the Triton pods.

The driver is the one writer: it builds the crop list, asks ``ResultsFile`` which crops are missing, streams
the actors' answers into the JSON Lines file as they arrive (in completion order, not input order) and
refuses to finish when a crop came back twice or never (Ray re-runs a batch whose actor died; the file must
still hold each crop once). An interrupted run leaves ``FILE.partial``, which ``--resume`` completes.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headserve.client.decision import Thresholds
from headserve.client.errors import ClientConfigError
from headserve.client.options import ConnectionOptions
from headserve.errors import HeadserveError
from headserve.ray_cluster import check_address, connect, import_ray

# What Ray Data appends to the message of an exception raised in a map function (ray/data/_internal/planner).
RAY_DATA_NOTE = "\nFailed to apply UDF transform"
ACTOR_START_TIMEOUT_S = 300  # how long the pool's first actors may take to start (a cluster adding nodes: minutes)


@dataclass(frozen=True)
class RayClassifyConfig:
    """One batch classification on Ray Data: where the cluster is, which service answers, how the work is cut."""

    head: str  # head (ensemble) name on the server
    url: str  # Triton gRPC address every actor connects to (a Service name on a cluster)
    options: ConnectionOptions = ConnectionOptions()  # deadlines, retries, TLS of each actor's client
    top_k: int = 3  # classes each answer lists, most probable first
    thresholds: Thresholds = Thresholds()  # acceptance thresholds, the same for every crop
    address: str | None = None  # Ray cluster (ray.init's address); None: RAY_ADDRESS, else a local Ray
    actors: int = 0  # most client actors at once; 0: one per CPU of the cluster
    batch_size: int = 64  # crops per actor call, also the granularity of results on the driver

    def __post_init__(self) -> None:
        check_address(self.address)
        if self.actors < 0:
            raise ClientConfigError(f"actors={self.actors} must be at least 1 (0: one per CPU of the "
                                    "cluster)").about("actors", self.actors)
        if self.batch_size < 1:
            raise ClientConfigError(f"batch_size={self.batch_size} must be at least 1").about(
                "batch_size", self.batch_size)


@dataclass(frozen=True)
class RaySummary:
    """What a run did: answers written, and where they were computed."""

    answered: int  # crops answered and written by this run
    rows_per_node: dict[str, int]  # Ray node id -> crops its actors answered


def crop_items(descriptions: Sequence[dict[str, Any]], positions: Sequence[int],
               boxes: Sequence[Sequence[float]] | None) -> list[dict[str, Any]]:
    """The rows Ray ships to the actors: a crop's position and what loads it (an image file, or an image and the
    exact pixel box of a YOLO line; the description rounds the box, so the box travels on its own)."""
    items = []
    for i in positions:
        d = descriptions[i]
        items.append({"position": int(i), "image": d["image"], "source": d.get("source", ""),
                      "class_id": int(d.get("class_id", -1)),
                      "box": [float(v) for v in boxes[i]] if boxes is not None else []})
    return items


class ClassifyActor:
    """One client of the fleet: loads its batch's crops and classifies them with the served head."""

    def __init__(self, config: RayClassifyConfig) -> None:
        import ray

        from headserve.client import HeadClient

        self.config = config
        self.client = HeadClient(config.url, config.options)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = [_load(image, source, class_id, box) for image, source, class_id, box
                 in zip(batch["image"], batch["source"], batch["class_id"], batch["box"])]
        answers = self.client.classify(self.config.head, crops, self.config.top_k, self.config.thresholds)
        return {"position": batch["position"],
                "answer": np.array([json.dumps(a.to_json()) for a in answers], dtype=object),
                "node": np.array([self.node] * len(answers), dtype=object)}


def _load(image: str, source: str, class_id: int, box: Any) -> Any:
    """A crop as the client takes it: the file path, or the YOLO line's crop (``CropRef``, as `classify --yolo`)."""
    if len(box) == 0:
        return str(image)
    from headserve.client.crops import CropRef

    x1, y1, x2, y2 = (float(v) for v in box)  # the exact pixel box `classify --yolo` cut
    return CropRef(Path(image), int(class_id), (x1, y1, x2, y2), str(source)).load()


def _pool(config: RayClassifyConfig) -> Any:
    """The actor pool: ``actors`` fixed when set, else from one up to one per CPU of the cluster. An actor
    holds two batches (one running, one queued) so that batches spread over a new actor instead of queueing."""
    import ray
    import ray.data

    if config.actors:
        return ray.data.ActorPoolStrategy(size=config.actors, max_tasks_in_flight_per_actor=2)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=cpus, max_tasks_in_flight_per_actor=2)


def classify_on_ray(config: RayClassifyConfig, items: list[dict[str, Any]],
                    write: Callable[[int, dict[str, Any]], None]) -> RaySummary:
    """Classify ``items`` (``crop_items``) on the cluster; ``write(position, answer)`` once per crop, on this process.

    Raises the first headserve error an actor raised (a bad crop, the server gone) unwrapped from Ray's, so
    the command prints it as one line; the answers written before it stay written.
    """
    ray = import_ray()

    from headserve.client import HeadClient

    with HeadClient(config.url, config.options) as client:  # a wrong address or head fails here, before Ray starts
        config.thresholds.check_classes(client.info(config.head))
    connect(config.address)  # the one way headserve joins Ray: `embed --ray` joins the same way
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    # The pool's first actors are all up before any batch goes out, so a fixed pool shares the work from the
    # start; an actor that cannot be placed (no free CPU) fails the run after this deadline instead of hanging.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    context.raise_original_map_exception = True  # an actor's headserve error reaches here as itself, not as Data's
    # The command prints a headserve error as one line; Ray Data would log the worker's traceback before it
    # (it stays in the session's log files) and its plan at INFO.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    seen = np.zeros(len(items), dtype=bool)
    index = {item["position"]: k for k, item in enumerate(items)}
    rows: collections.Counter[str] = collections.Counter()
    if not items:
        return RaySummary(0, {})
    dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // config.batch_size)))
    answered = dataset.map_batches(ClassifyActor, fn_constructor_kwargs={"config": config},
                                   batch_size=config.batch_size, batch_format="numpy", num_cpus=1,
                                   compute=_pool(config))
    try:
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            for position, answer, node in zip(batch["position"], batch["answer"], batch["node"]):
                k = index[int(position)]
                if seen[k]:  # Ray re-ran a batch whose first answer already arrived: the file keeps one
                    continue
                seen[k] = True
                write(int(position), json.loads(answer))
                rows[str(node)] += 1
    except Exception as exc:
        cause = headserve_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    if not seen.all():
        missing = [items[k]["position"] for k in np.flatnonzero(~seen)[:5]]
        raise HeadserveError(f"Ray returned no answer for {int((~seen).sum())} crops (positions {missing}...); "
                             "the answers that came are kept: run the same command again with --resume")
    return RaySummary(int(seen.sum()), dict(rows))


def headserve_cause(exc: BaseException) -> HeadserveError | None:
    """The headserve error an actor raised, out of Ray's ``RayTaskError`` (which also subclasses it, but prints
    the worker's traceback), with the retry advice Ray Data appends to its message cut off; None when the
    failure is Ray's own."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, HeadserveError):
        return None
    if cause.args and isinstance(cause.args[0], str):
        cause.args = (cause.args[0].split(RAY_DATA_NOTE, 1)[0], *cause.args[1:])
    return cause
