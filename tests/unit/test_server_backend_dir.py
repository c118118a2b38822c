"""The python backend directory the local server hands tritonserver: links into one nvidia-pytriton
installation, never re-pointed by another environment of the same user."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from headserve.server import _backend_dir


def _installation(root: Path) -> Path:
    """A directory laid out as nvidia-pytriton's package: the stub for this Python and the backend files."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    stub.parent.mkdir(parents=True)
    stub.write_text("stub")
    backend = root / "tritonserver" / "backends" / "python"
    backend.mkdir(parents=True)
    (backend / "libtriton_python.so").write_text("lib")
    return root


def test_two_installations_get_two_backend_directories_each_linking_into_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    one, other = _installation(tmp_path / "env-one" / "pytriton"), _installation(tmp_path / "env-two" / "pytriton")

    first = _backend_dir(one)
    second = _backend_dir(other)  # before the fix this re-pointed the first environment's links
    assert first != second
    for base, root in ((first, one), (second, other)):
        stub = base / "python" / "triton_python_backend_stub"
        assert Path(os.readlink(stub)).is_relative_to(root)
        assert Path(os.readlink(base / "python" / "libtriton_python.so")).is_relative_to(root)
    assert _backend_dir(one) == first  # the same installation finds its own directory again
