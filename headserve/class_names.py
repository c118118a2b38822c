"""Class names: checked once, where they enter headserve (a dataset, a legacy import, an artifact's export).

A name travels through a labels file (one name per line), JSON config parameters, JSON Lines output and
``export prompts --prompt CLASS:TEXT``. A newline would add a line to the labels file and shift every
label after it; other control characters and blank names print as nothing. Those are refused here, with
the name, where it came from and why, instead of surfacing later as a wrong label. A ':' is allowed:
``export prompts`` matches the longest class name before a colon (``headserve.export.prompts``).
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

from headserve.errors import ClassNameError

# Unicode categories a name may not contain: control characters (newline, tab, ...), line and paragraph
# separators. Format characters (Cf) stay allowed: emoji sequences and some scripts need zero-width joiners.
FORBIDDEN_CATEGORIES = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def check_class_names(names: Iterable[object], origin: str) -> list[str]:
    """The names as strings, or a ``ClassNameError`` naming the first bad one, ``origin`` and the reason."""
    out = [str(n) for n in names]
    seen: dict[str, int] = {}
    for index, name in enumerate(out):
        why = _problem(name)
        if why:
            raise ClassNameError(f"class {index} name {name!r} from {origin} {why}; class names go into labels "
                                 "files and config parameters one per line: rename the class")
        if name in seen:
            raise ClassNameError(f"class {index} name {name!r} from {origin} repeats class {seen[name]}; "
                                 "each class needs its own name or its probabilities cannot be told apart")
        seen[name] = index
    return out


def _problem(name: str) -> str:
    if not name.strip():
        return "is empty or only spaces"
    if name != name.strip():
        return "starts or ends with whitespace, which a labels file does not keep"
    for ch in name:
        category = unicodedata.category(ch)
        if category in FORBIDDEN_CATEGORIES:
            return f"contains {FORBIDDEN_CATEGORIES[category]} (U+{ord(ch):04X})"
    return ""
