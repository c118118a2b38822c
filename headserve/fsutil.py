"""Atomic file-system writes: build beside the target, then rename, so readers never see half a file.

Everything written here is readable by the owner's group and by no one else: directories
``DIR_MODE`` (0750), files ``FILE_MODE`` (0640), whatever the process umask. A model repository is
written by one user (an exporter, a CI job) and read by another (the Triton server, which in the
Kubernetes deployment runs as a fixed non-root UID that shares only the group, deploy/README.md); the
modes ``mkstemp`` and ``mkdtemp`` give by default (0600/0700) would lock that server out. Nothing is
world-readable: a repository holds a team's trained heads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DIR_MODE = 0o750  # owner writes; the group (the server's) lists and enters; others nothing
FILE_MODE = 0o640  # owner writes; the group (the server's) reads; others nothing


def ensure_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` whose new directories get ``DIR_MODE``; directories that already exist keep theirs."""
    path = Path(path)
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:  # made by a concurrent writer between the check and here
            continue
        os.chmod(p, DIR_MODE)
    return path


def share_with_group(root: str | os.PathLike) -> Path:
    """Give ``root`` and everything below it ``DIR_MODE``/``FILE_MODE`` (files copied in keep the umask's)."""
    root = Path(root)
    os.chmod(root, DIR_MODE)
    for parent, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(parent, d), DIR_MODE)
        for f in files:
            os.chmod(os.path.join(parent, f), FILE_MODE)
    return root


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh hidden directory beside ``final`` on the same file system, for ``publish_dir``."""
    final = Path(final)
    ensure_dir(final.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging.", dir=final.parent))
    os.chmod(staged, DIR_MODE)
    return staged


def publish_dir(staged: Path, final: str | os.PathLike) -> Path:
    """Rename a staged directory into place, replacing what was there, readable by the group."""
    final = Path(final)
    share_with_group(staged)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        old.rmdir()
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)
    return final
