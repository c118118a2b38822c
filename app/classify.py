"""`headserve classify` and `headserve gate`: crops in, one JSON object per crop out (no torch is imported).

Crops come from image files (each file is one crop) or from a YOLO dataset's boxes and polygons
(``--yolo DIR``). Work goes in chunks so a progress bar on a terminal (stderr, only when it is a
TTY) moves while results stream to stdout, or to ``--output FILE``, which ``--resume`` completes after
a failure (app/results_file.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from headserve.app.results_file import ResultsFile

if TYPE_CHECKING:
    from headserve.client import ConnectionOptions, CropRef, HeadClient, Thresholds

CHUNK = 64  # crops per client call: results stream out at this granularity


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", type=Path, help="crop image files (one crop each)")
    p.add_argument("--yolo", type=Path, default=None, metavar="DIR",
                   help="YOLO dataset (images/ + labels/): classify every box and polygon instead")
    p.add_argument("--head", required=True, help="head (ensemble) name on the server")
    p.add_argument("--url", default="127.0.0.1:8001",
                   help="Triton gRPC address (default %(default)s, what `headserve serve` listens on)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds (default %(default)s)")
    p.add_argument("--min-confidence", type=float, default=0.5,
                   help="calibrated top-1 probability to accept (default %(default)s)")
    p.add_argument("--min-margin", type=float, default=0.1,
                   help="top-1 minus top-2 below this is ambiguous (default %(default)s)")
    p.add_argument("--ood-threshold", type=float, default=None,
                   help="override the head's published OOD threshold (default: the head's own)")
    p.add_argument("--class-confidence", action="append", default=[], metavar="CLASS=P",
                   help="per-class min confidence; repeat (default: --min-confidence for every class)")
    p.add_argument("--root-certificates", default=None, help="PEM file of the server's CA (TLS)")
    p.add_argument("--private-key", default=None, help="client key PEM (mutual TLS)")
    p.add_argument("--certificate-chain", default=None, help="client certificate PEM (mutual TLS)")
    p.add_argument("--compression", default=None, choices=("gzip", "deflate"), help="gRPC compression")
    p.add_argument("--round-robin", action="store_true",
                   help="spread requests over every address --url resolves to (a headless Service: "
                        "dns:///SERVICE:8001), instead of sending all of them to the first")
    p.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="write the JSON Lines to FILE (FILE.partial until every crop is in) instead of stdout")
    p.add_argument("--resume", action="store_true",
                   help="with --output: keep the results already in FILE(.partial) and classify only the missing crops")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify crops with a served head (JSON Lines out)")
    _common(p)
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="how many classes, most probable first, each answer lists (default %(default)s)")
    p.add_argument("--regions", action="store_true",
                   help="with --yolo and a head trained with --pooling region: send each image once with all its "
                        "boxes (one encoder pass per image) instead of one crop per box")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="classify on Ray Data: a fleet of client actors sends the crops to --url, answers are "
                        "written as they arrive (not in input order). ADDRESS: the cluster (auto, HOST:PORT, "
                        "ray://HOST:PORT); without it RAY_ADDRESS, else a local Ray. Crop paths must be readable "
                        "on every node")
    p.add_argument("--ray-actors", type=_positive, default=0, metavar="N",
                   help="with --ray: client actors, all started before work is handed out (default: from one up "
                        "to one per CPU of the cluster)")
    p.add_argument("--ray-batch", type=_positive, default=CHUNK, metavar="N",
                   help="with --ray: crops per actor call (default %(default)s)")
    p.set_defaults(func=_classify)
    g = sub.add_parser("gate", help="keep or drop mining candidates for a target class (JSON Lines out)")
    _common(g)
    g.add_argument("--target", required=True, help="class name the mining run wants")
    g.add_argument("--prompt-threshold", type=float, default=0.2,
                   help="CLIP prefilter: min prompt similarity (default %(default)s)")
    g.add_argument("--no-prefilter", action="store_true", help="head gating only")
    g.add_argument("--estimate", action="store_true",
                   help="print the compute estimate (one JSON object) for these candidates, and gate nothing")
    g.set_defaults(func=_gate)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _thresholds(args: argparse.Namespace) -> Thresholds:
    from headserve.client.decision import Thresholds
    from headserve.client.errors import BadInputError

    per_class: dict[str, float] = {}
    for item in args.class_confidence:
        name, sep, value = item.rpartition("=")
        try:
            per_class[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise BadInputError(f"--class-confidence {item!r} is not CLASS=P (e.g. digit_3=0.8)")
    return Thresholds(args.min_confidence, args.min_margin, args.ood_threshold, per_class_confidence=per_class)


@contextlib.contextmanager
def _notices() -> Iterator[None]:
    """Show the client's notices (e.g. "prompt prefilter disabled for DINOv3") on stderr during a command."""
    log = logging.getLogger("headserve.client")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("headserve: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _client_options(args: argparse.Namespace) -> ConnectionOptions:
    from headserve.client import ConnectionOptions
    from headserve.client.options import ROUND_ROBIN

    return ConnectionOptions(timeout_s=args.timeout, root_certificates=args.root_certificates,
                             private_key=args.private_key, certificate_chain=args.certificate_chain,
                             compression=args.compression, channel_options=ROUND_ROBIN if args.round_robin else ())


def _client(args: argparse.Namespace) -> HeadClient:
    from headserve.client import HeadClient

    return HeadClient(args.url, _client_options(args))


Sources = tuple[list[dict[str, Any]], Callable[[Sequence[int]], list[Any]], "list[tuple[float, ...]] | None"]


def _sources(args: argparse.Namespace) -> Sources:
    """Row descriptions, a loader of the crops at given positions, and the YOLO crops' exact pixel boxes (None
    for crop files): a description rounds the box, and `classify --ray` cuts the crop again on a worker."""
    from headserve.client.errors import BadInputError

    if args.yolo is not None:
        refs = _yolo_refs(args)
        return [r.to_json() for r in refs], lambda idx: [refs[i].load() for i in idx], [r.box_xyxy for r in refs]
    if not args.images:
        raise BadInputError("no crops given; pass image files or --yolo DIR")
    for path in args.images:  # before anything is sent or written: a bad path must not stop a run half-way
        _check_crop_path(path)
    return [{"image": str(p)} for p in args.images], lambda idx: [str(args.images[i]) for i in idx], None


def _yolo_refs(args: argparse.Namespace) -> list[CropRef]:
    """Every labelled box of ``--yolo DIR``, in file order; none is a ``BadInputError``."""
    from headserve.client.crops import crops_from_yolo
    from headserve.client.errors import BadInputError

    if args.images:
        raise BadInputError("pass image files or --yolo DIR, not both")
    refs = list(crops_from_yolo(args.yolo))
    if not refs:
        raise BadInputError(f"YOLO dataset {args.yolo} has no labelled boxes; nothing to classify")
    return refs


def _check_crop_path(path: Path) -> None:
    """Refuse a crop argument that is not a file, saying what it is and what to pass instead."""
    from headserve.client.errors import BadInputError

    if path.is_dir():
        if (path / "images").is_dir() and (path / "labels").is_dir():
            raise BadInputError(f"crop image {path} is a directory holding a YOLO dataset (images/ + labels/); "
                                f"pass --yolo {path} to classify its boxes")
        raise BadInputError(f"crop image {path} is a directory, not an image file; pass the image files in it "
                            f"(e.g. {path / '*.png'}), or --yolo DIR for a YOLO dataset")
    if not path.exists():
        raise BadInputError(f"crop image {path} does not exist; check the path")
    if not path.is_file():
        raise BadInputError(f"crop image {path} is not a regular file (a device, pipe or socket); pass an image file")


def _chunks(todo: Sequence[int]) -> Iterator[Sequence[int]]:
    progress = _Progress(len(todo))
    for start in range(0, len(todo), CHUNK):
        yield todo[start:start + CHUNK]
        progress.update(min(start + CHUNK, len(todo)))
    progress.close()


@contextlib.contextmanager
def _results(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Iterator[tuple[ResultsFile, list[int]]]:
    """The output and the positions of the crops still to do; the file is completed only on success."""
    out = ResultsFile(args.output, args.resume)
    todo = out.pending(rows)
    try:
        yield out, todo
    except BaseException as exc:
        hint = out.abandon(exc)
        if hint:
            logging.getLogger("headserve.client").warning(hint)
        raise
    out.finish()


def result_row(source: dict[str, Any], head: str, answer: dict[str, Any]) -> dict[str, Any]:
    """One output row, the same for every path (crops, regions, Ray): what was classified, by which head
    (the answer carries its version), and the decision."""
    return {**source, "head": head, **answer}


def _classify(args: argparse.Namespace) -> int:
    from headserve.client.errors import BadInputError

    if args.regions and args.ray is not None:
        raise BadInputError("--regions and --ray do not combine: --ray sends crops; classify a region head without "
                            "--ray")
    if args.regions:
        return _classify_regions(args)
    if args.ray is not None:
        return _classify_on_ray(args)
    rows, load, _ = _sources(args)
    thresholds = _thresholds(args)
    with _notices(), _results(args, rows) as (out, todo), _client(args) as client:
        for idx in _chunks(todo):
            for i, pred in zip(idx, client.classify(args.head, load(idx), args.top_k, thresholds)):
                out.write(result_row(rows[i], args.head, pred.to_json()))
    return 0


def _classify_on_ray(args: argparse.Namespace) -> int:
    """`classify --ray`: the same rows as `classify`, from client actors on Ray Data (app/ray_classify.py)."""
    from headserve.app.ray_classify import RayClassifyConfig, classify_on_ray, crop_items

    config = RayClassifyConfig(args.head, args.url, _client_options(args), args.top_k, _thresholds(args),
                               address=args.ray or None, actors=args.ray_actors, batch_size=args.ray_batch)
    rows, _, boxes = _sources(args)
    with _notices(), _results(args, rows) as (out, todo):
        summary = classify_on_ray(config, crop_items(rows, todo, boxes),
                                  lambda i, answer: out.write(result_row(rows[i], args.head, answer)))
    nodes = ", ".join(f"{node[:8]}: {n}" for node, n in sorted(summary.rows_per_node.items()))
    sys.stderr.write(f"headserve: {summary.answered} crops classified on {len(summary.rows_per_node)} Ray "
                     f"node(s) ({nodes or 'none'})\n")
    return 0


def _classify_regions(args: argparse.Namespace) -> int:
    """``classify --yolo DIR --regions``: each image's boxes of a chunk in one region request; rows as without."""
    from headserve.client.errors import BadInputError

    if args.yolo is None:
        raise BadInputError("--regions classifies the boxes of a YOLO dataset's images; pass --yolo DIR")
    refs = _yolo_refs(args)
    rows = [r.to_json() for r in refs]
    thresholds = _thresholds(args)
    with _notices(), _results(args, rows) as (out, todo), _client(args) as client:
        for idx in _chunks(todo):
            by_image: dict[Path, list[int]] = {}
            for i in idx:
                by_image.setdefault(refs[i].image, []).append(i)
            for image, members in by_image.items():
                boxes = [refs[i].box_xyxy for i in members]
                for i, pred in zip(members, client.classify_regions(args.head, image, boxes, args.top_k, thresholds)):
                    out.write(result_row(rows[i], args.head, pred.to_json()))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from headserve.client.gating import GateConfig

    rows, load, _ = _sources(args)
    config = GateConfig(args.target, _thresholds(args), args.prompt_threshold, not args.no_prefilter)
    if args.estimate:
        with _notices(), _client(args) as client:
            _emit(client.estimate(args.head, len(rows)).to_json())
        return 0
    with _notices(), _results(args, rows) as (out, todo), _client(args) as client:
        for idx in _chunks(todo):
            for i, result in zip(idx, client.gate(args.head, load(idx), config)):
                out.write({**rows[i], **result.to_json()})
    return 0


def _emit(row: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.on = sys.stderr.isatty()
        self.update(0)

    def update(self, done: int) -> None:
        if self.on:
            filled = int(30 * done / max(1, self.total))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} crops")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\n")
