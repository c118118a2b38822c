"""`headserve artifacts list` (what was trained, on disk) and `headserve status` (what a running server serves).

The two ends of a head's life cycle that `repo list` (the repository on disk) does not show. Neither imports
torch: `artifacts list` reads meta.json files only, `status` asks the server through the client's own
discovery (``head_info_from_config``), so it shows a head's classes exactly as a client would read them.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

# The headline figures of a training report (train/report.py's first rows), as meta.json's metrics keep them.
HEADLINE_METRICS: tuple[str, ...] = ("macro_f1_fg", "ece_after", "ood_auroc")
REPORT_SUFFIX = ".report"  # `train` writes its report beside the artifact, in OUT.report, unless --report moved it


def register(sub: argparse._SubParsersAction) -> None:
    artifacts = sub.add_parser("artifacts", help="list the head artifacts `headserve train` wrote under a directory")
    action = artifacts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = action.add_parser("list", help="one line per artifact: name, kind, encoder, classes, created, headline "
                                             "metrics, path (searched recursively)")
    listing.add_argument("directory", type=Path, nargs="?", default=Path("."),
                         help="where to look, recursively (default: the current directory)")
    listing.add_argument("--json", action="store_true", help="one JSON object per artifact, one per line")
    listing.set_defaults(func=_artifacts_list)

    status = sub.add_parser("status", help="what a running Triton serves: each model's state and versions, and per "
                                           "head the version, classes and encoder a client reads")
    status.add_argument("--url", default="127.0.0.1:8001",
                        help="Triton gRPC address (default %(default)s, what `headserve serve` listens on)")
    status.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds (default %(default)s)")
    status.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    status.set_defaults(func=_status)


def artifact_rows(directory: Path) -> list[dict[str, Any]]:
    """Every artifact under ``directory`` (a folder holding meta.json), newest first; unreadable ones named on
    stderr and left out. Hidden folders (an artifact being written, an old one being replaced) are skipped."""
    from headserve.artifact import META_FILE, load_meta
    from headserve.errors import HeadserveError

    if not directory.is_dir():
        from headserve.errors import ArtifactError

        raise ArtifactError(f"{directory} is not a directory; pass the folder your artifacts are under")
    rows = []
    for meta_path in sorted(directory.rglob(META_FILE)):
        if any(part.startswith(".") and part not in (".", "..") for part in meta_path.relative_to(directory).parts):
            continue
        try:
            meta = load_meta(meta_path.parent)
        except (HeadserveError, OSError) as exc:
            print(f"headserve artifacts: skipped {meta_path}: {exc}", file=sys.stderr)
            continue
        report = meta_path.parent.with_name(meta_path.parent.name + REPORT_SUFFIX) / "report.md"
        rows.append({
            "name": meta.name,
            "kind": meta.head_type + ("" if meta.head_config.get("classifier", "linear") == "linear"
                                      else f" ({meta.head_config['classifier']})"),
            "encoder": (meta.encoder.name or meta.encoder.label) + (" (untrained)" if meta.encoder_untrained else ""),
            "classes": list(meta.classes),
            "created": datetime.fromtimestamp(meta_path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
            "metrics": {k: meta.metrics[k] for k in HEADLINE_METRICS if k in meta.metrics},
            "path": str(meta_path.parent),
            "report": str(report) if report.is_file() else None,
        })
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def _artifacts_list(args: argparse.Namespace) -> int:
    rows = artifact_rows(args.directory)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(f"{args.directory}: no artifacts (folders with meta.json) found")
        return 0
    print_table([{**{k: r[k] for k in ("name", "kind", "encoder")}, "classes": f"{len(r['classes'])}: "
             + ",".join(r["classes"]), "created": r["created"],
             **{k: f"{r['metrics'][k]:.3f}" if isinstance(r["metrics"].get(k), float) else "" for k in HEADLINE_METRICS},
             "path": r["path"]} for r in rows])
    return 0


def served_rows(url: str, timeout_s: float) -> list[dict[str, Any]]:
    """One row per model in the server's repository index: state and versions, and for a head ensemble the
    head version its steps run and the head as a client reads it (``head_info_from_config``)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from headserve.client.discovery import head_info_from_config
    from headserve.client.errors import ClientError, from_triton

    try:
        with grpcclient.InferenceServerClient(url) as client:
            index = client.get_model_repository_index(as_json=True, client_timeout=timeout_s).get("models", [])
            states: dict[str, list[Mapping[str, str]]] = {}
            for entry in index:
                states.setdefault(entry["name"], []).append(entry)
            rows = []
            for name, entries in sorted(states.items()):
                ready = sorted((e.get("version", "") for e in entries if e.get("state") == "READY"), key=_version_key)
                row: dict[str, Any] = {"model": name, "state": "READY" if ready else _state(entries),
                                       "versions": ready, "reason": "; ".join(e["reason"] for e in entries
                                                                             if e.get("reason") and not ready)}
                if ready:
                    config = client.get_model_config(name, client_timeout=timeout_s).config
                    if config.platform == "ensemble" and "classes" in config.parameters:
                        try:
                            info = head_info_from_config(name, config, ready[-1])
                        except ClientError as exc:
                            row["reason"] = str(exc)
                        else:
                            head_step = config.ensemble_scheduling.step[-1]
                            row["head"] = {"head_model": head_step.model_name,
                                           "head_version": str(head_step.model_version),
                                           "classes": list(info.classes),
                                           "encoder": info.served.encoder.name or info.served.encoder.label,
                                           "head_id": info.head_id}
                rows.append(row)
    except InferenceServerException as exc:
        raise from_triton(exc, f"reading what {url} serves") from exc
    return rows


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _state(entries: Sequence[Mapping[str, str]]) -> str:
    return ",".join(sorted({e.get("state") or "UNLOADED" for e in entries}))


def _status(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        from headserve.errors import ConfigError

        raise ConfigError(f"--timeout {args.timeout}: a deadline must be a positive number of seconds")
    rows = served_rows(args.url, args.timeout)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(f"{args.url}: serves no models")
        return 0
    table = []
    for r in rows:
        head = r.get("head")
        table.append({"model": r["model"], "state": r["state"], "versions": ",".join(r["versions"]),
                      "head version": "" if head is None else head["head_version"].replace("-1", "newest"),
                      "encoder": "" if head is None else head["encoder"],
                      "classes": "" if head is None else ",".join(head["classes"]),
                      "reason": r["reason"]})
    print_table(table)
    return 0


def print_table(rows: Sequence[Mapping[str, str]]) -> None:
    """Rows as aligned columns under a header (the shape of `repo list`)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
