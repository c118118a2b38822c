"""The tiny random twins the session's heads are trained on: one per registered encoder family.

Read from the registry (``FAMILIES``), so a family added with its twin is trained, exported, served and
compared with in-process PyTorch by every test that iterates these, without editing a list.
"""

from __future__ import annotations

import re

from headserve.encoders import FAMILIES, tiny_twin


def _twin(family: str) -> str:
    spec = tiny_twin(family)
    assert spec is not None, f"encoder family {family} has no tiny twin (tests/unit/test_encoders.py says so too)"
    return spec.name


TINY_ENCODERS: tuple[str, ...] = tuple(_twin(family) for family in FAMILIES)


def head_name(encoder: str) -> str:
    """The session head trained on ``encoder``: ``t_`` and the name with every non-word character as ``_``."""
    return "t_" + re.sub(r"\W", "_", encoder)
