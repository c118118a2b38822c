"""A head's life cycle in a repository after its export: pin (roll back to) a version, unpin, remove.

Pinning re-renders the head's ensemble from the ``ServedHead`` record that the pinned version was exported
with (``SERVED_RECORD`` in its version directory), never by editing the written config, so the ensemble's
classes, labels file and ``head_id`` are that version's: a client that checks ``head_id`` on every answer
reads the classes of the version that computed it. The head model's version policy is set to the pinned
version alone, so Triton loads that version (however old) and nothing newer answers through the ensemble's
``-1`` steps (the encoded-image variant is re-rendered too). A later ``export head`` writes a new version
with the newest-two policy again: a new export is a new rollout, and it ends the pin.

Removing renames every model directory of the head away first (one rename each, under the repository's
writer lock), then deletes them: a reader sees a model whole or not at all.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from headserve.contract import (
    HEAD_OUTPUT_WIDTHS,
    LABELS_FILE,
    ServedHead,
    decoder_model_name,
    encoded_model_name,
    head_model_name,
    prompt_model_name,
)
from headserve.errors import RepositoryError
from headserve.export.model_config import Runtime, parameters_of, read_config, to_text
from headserve.fsutil import write_text_atomic
from headserve.lockfile import repository_lock

if TYPE_CHECKING:  # export.repository imports torch: `repo list` reads pins without it
    from headserve.export.repository import EnsembleWiring, WrittenModel


def versions_of(model_dir: Path) -> list[int]:
    """The version directories of a model, ascending."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def pinned_version(model_dir: Path) -> int | None:
    """The version a head model is pinned to (its config names one specific version); None when it is not."""
    path = Path(model_dir) / "config.pbtxt"
    if not path.is_file():
        return None
    policy = read_config(path).version_policy
    if policy.WhichOneof("policy_choice") == "specific" and len(policy.specific.versions) == 1:
        return int(policy.specific.versions[0])
    return None


def version_record(head_dir: Path, version: int, name: str) -> ServedHead:
    """The record head version ``version`` was exported with; RepositoryError when it has none."""
    from headserve.export.repository import SERVED_RECORD

    path = head_dir / str(version) / SERVED_RECORD
    try:
        params = json.loads(path.read_text())
    except FileNotFoundError:
        raise RepositoryError(f"{path} does not exist: version {version} of {head_dir.name} was exported before "
                              "headserve kept each version's record, so its classes are unknown; export its "
                              "artifact again (a new version) instead of pinning it") from None
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path} cannot be read ({exc}); export that version's artifact again") from None
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise RepositoryError(f"{path} is not a record of string parameters; export that version's artifact again")
    return ServedHead.from_parameters(name, params, where=str(path))


@dataclass(frozen=True)
class Pinned:
    """What `repo pin` wrote, for the rollout and the report."""

    head: str  # the head ensemble's name
    version: int  # the head version the ensemble now answers with
    pinned: bool  # False: unpinned, following the newest version again
    record: ServedHead  # that version's record, now published by the ensemble
    written: tuple[WrittenModel, ...]  # the head model (its new policy) and the ensembles re-rendered, in load order


def pin_head(repo: str | Path, head: str, version: int | None) -> Pinned:
    """Make ``head``'s ensemble answer with head version ``version`` (None: the newest again, unpinned)."""
    from headserve.export.multi_head import multi_head_ensembles
    from headserve.export.repository import WrittenModel, read_served_head, write_ensemble

    repo = _require_head(Path(repo), head)
    with repository_lock(repo):
        _, wiring = read_served_head(repo, head, "pinning it")
        head_dir = repo / wiring.head_model
        versions = versions_of(head_dir)
        target = versions[-1] if version is None else version
        if target not in versions:
            raise RepositoryError(f"{head_dir} has no version {target} (it has {', '.join(map(str, versions))}); "
                                  "pass one of those, as `headserve repo list` shows")
        others = {m: heads for m, heads in multi_head_ensembles(repo).items() if head in heads}
        if others and version is not None:
            raise RepositoryError(f"multi-head ensemble(s) {', '.join(sorted(others))} serve {head!r} at the version "
                                  "they were written with, which the pin would unload: export multi-head again "
                                  f"without {head!r} (or delete those ensembles) before pinning it")
        record = version_record(head_dir, target, head)
        if version is not None:
            keep = None
        else:  # the newest versions, as export leaves them: the one before too while it has as many classes
            keep = 1 if len(versions) < 2 else _keep_after(head_dir, versions[-2], head, len(record.classes))
        _set_policy(head_dir, target, keep, len(record.classes))
        write_text_atomic(head_dir / LABELS_FILE, "\n".join(record.classes) + "\n")
        pinned = replace(wiring, head_version=target)
        ensemble = write_ensemble(repo, record, wiring.encoder_model, wiring.head_model, Runtime.LOCAL,
                                  wiring.max_batch_size, head_version=target)
        written = [WrittenModel(wiring.head_model, target, head_dir / str(target), {}), ensemble]
        encoded = encoded_model_name(head)
        if (repo / encoded / "config.pbtxt").is_file():
            written.append(_rewrite_encoded(repo, record, pinned))
    return Pinned(head, target, version is not None, record, tuple(written))


def _keep_after(head_dir: Path, previous: int, head: str, classes: int) -> int:
    """Export's rule (``head_keep_versions``) for the version before the newest; one without a record: 1."""
    from headserve.export.repository import head_keep_versions

    try:
        width = len(version_record(head_dir, previous, head).classes)
    except RepositoryError:
        return 1  # its class count is unknown: serving it under the newest widths could fail every answer
    return head_keep_versions(width, classes)


def _require_head(repo: Path, head: str) -> Path:
    """``repo``, once it is seen to hold ``head``'s ensemble (before the writer lock, which would create it)."""
    if not (repo / head / "config.pbtxt").is_file():
        raise RepositoryError(f"{repo} holds no head {head!r}" + ("" if repo.is_dir() else " (it is not a directory)")
                              + f"; `headserve repo list {repo}` shows the heads of a repository")
    return repo


def _set_policy(head_dir: Path, version: int, keep: int | None, classes: int) -> None:
    """The head model's config for ``version``: its output widths, and a policy loading only it (``keep``
    None: pinned) or the newest ``keep`` versions.

    The head's config holds what export's record does not (instances, threads, runtime), so it is read
    back and only the per-version fields are set, rather than rendered afresh.
    """
    path = head_dir / "config.pbtxt"
    config = read_config(path)
    for output in config.output:
        output.dims[:] = [HEAD_OUTPUT_WIDTHS.get(output.name, classes)]
    if keep is None:
        config.version_policy.specific.versions[:] = [version]
    elif keep > 1:
        config.version_policy.latest.num_versions = keep
    else:
        config.ClearField("version_policy")  # Triton's default: the newest version only, as export renders it
    write_text_atomic(path, to_text(config))


def _rewrite_encoded(repo: Path, record: ServedHead, wiring: EnsembleWiring) -> WrittenModel:
    """The encoded-image variant, re-rendered like the head ensemble: same version, same record."""
    from headserve.export.encoded_input import encoded_ensemble_desc
    from headserve.export.repository import WrittenModel, publish_version

    desc = encoded_ensemble_desc(record, wiring, decoder_model_name(wiring.encoder_model))
    version, path = publish_version(repo / desc.name, desc, Runtime.LOCAL, {}, list(record.classes))
    return WrittenModel(desc.name, version, path, {})


@dataclass(frozen=True)
class Removed:
    """What `repo remove` took out of the repository."""

    models: tuple[str, ...]  # every model directory removed, dependents (ensembles) first
    encoder: str  # the head's encoder model
    encoder_users: tuple[str, ...]  # head ensembles still on that encoder (empty: no head uses it any more)


def remove_head(repo: str | Path, head: str, with_multi_head: bool = False, prune_encoder: bool = False) -> Removed:
    """Remove ``head``'s models: its ensemble, ``_head``, ``_encoded``, ``_prompts`` (labels with them).

    Refused (nothing removed) while a multi-head ensemble serves the head, unless ``with_multi_head``
    removes those ensembles too. The encoder is removed (with its decoder) only with ``prune_encoder`` and
    only when no other head ensemble runs on it.
    """
    from headserve.export.multi_head import multi_head_ensembles
    from headserve.export.repository import read_served_head

    repo = _require_head(Path(repo), head)
    with repository_lock(repo):
        _, wiring = read_served_head(repo, head, "removing it")
        multi = sorted(m for m, heads in multi_head_ensembles(repo).items() if head in heads)
        if multi and not with_multi_head:
            raise RepositoryError(f"multi-head ensemble(s) {', '.join(multi)} serve {head!r}; pass `with_multi_head` "
                                  "to remove them too (export multi-head again for the other heads), or export "
                                  "them without it first").about("with_multi_head")
        models = [*multi, encoded_model_name(head), head, prompt_model_name(head), head_model_name(head)]
        users = tuple(sorted(n for n in _head_ensembles_on(repo, wiring.encoder_model) if n not in models))
        if prune_encoder and not users:
            models += [decoder_model_name(wiring.encoder_model), wiring.encoder_model]
        present = [m for m in models if (repo / m).is_dir()]
        moved = [_move_away(repo / m) for m in present]
    for path in moved:
        shutil.rmtree(path, ignore_errors=True)
    return Removed(tuple(present), wiring.encoder_model, users)


def _head_ensembles_on(repo: Path, encoder_model: str) -> list[str]:
    """Every model whose first ensemble step runs ``encoder_model`` (head ensembles and their variants)."""
    found = []
    for path in sorted(repo.glob("*/config.pbtxt")):
        try:
            config = read_config(path)
        except RepositoryError:
            continue
        steps = config.ensemble_scheduling.step
        if config.platform == "ensemble" and "preprocess" in parameters_of(config) and any(
                s.model_name == encoder_model for s in steps):
            found.append(path.parent.name)
    return found


def _move_away(model_dir: Path) -> Path:
    """Rename a model directory to a hidden name beside it (Triton and `repo list` skip dot-names)."""
    away = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.removed.", dir=model_dir.parent))
    away.rmdir()
    model_dir.rename(away)
    return away
