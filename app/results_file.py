"""Where `classify` and `gate` put their JSON Lines: stdout, or a file that a rerun can complete (the app's, not
the client library's: it names their flags).

A run into ``--output FILE`` writes ``FILE.partial`` (one ``write`` per whole line, appended) and
renames it to ``FILE`` once every crop is in, so ``FILE`` itself is never half-written. When the
server dies part-way, ``FILE.partial`` holds whole lines of the crops done so far; ``--resume``
drops an unfinished last line (a client killed mid-write), skips the crops already present (matched
by their description: image, and for YOLO crops source line, class and box) and appends only the
missing ones. A crop listed twice is classified twice, and counted so.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from headserve.client.errors import BadInputError
from headserve.errors import ImageDecodeError

PARTIAL_SUFFIX = ".partial"
# Failures caused by the crops themselves: the same command would stop at the same crop again, so the
# hint after them says to fix the input first. Any other failure (server gone, deadline, swap) may pass.
INPUT_ERRORS: tuple[type[BaseException], ...] = (BadInputError, ImageDecodeError)


def row_key(description: dict, keys: Sequence[str]) -> str:
    """The identity of a crop: its description fields, in a canonical JSON form."""
    return json.dumps({k: description.get(k) for k in keys}, sort_keys=True)


class ResultsFile:
    """JSON Lines out: to stdout when ``path`` is None, else to ``path`` via ``path.partial``."""

    def __init__(self, path: Path | None, resume: bool = False) -> None:
        if resume and path is None:
            raise BadInputError("--resume needs --output FILE: it completes the results already in that file")
        self.path = path
        self.resume = resume
        self.partial = None if path is None else path.with_name(path.name + PARTIAL_SUFFIX)
        self._fd: int | None = None
        self.written = 0  # lines written by this run
        self.kept = 0  # lines found from an earlier run

    def pending(self, descriptions: Sequence[dict]) -> list[int]:
        """Open the output and return the positions of the crops it does not hold yet."""
        if self.partial is None:
            return list(range(len(descriptions)))
        keys = sorted({k for d in descriptions for k in d})
        done = collections.Counter(self._open(keys))
        self.kept = sum(done.values())
        todo = []
        for i, description in enumerate(descriptions):
            key = row_key(description, keys)
            if done[key] > 0:
                done[key] -= 1
            else:
                todo.append(i)
        return todo

    def _open(self, keys: Sequence[str]) -> list[str]:
        """Open ``path.partial`` for appending; the keys of the rows it already holds (resume) or none."""
        assert self.path is not None and self.partial is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            if self.partial.exists():
                raise BadInputError(f"{self.partial} holds the results of an interrupted run; pass --resume to "
                                    "complete it, or delete it to start over")
            self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            return []
        if not self.partial.exists() and self.path.exists():  # a finished run: extend it with new crops
            os.replace(self.path, self.partial)
        found: list[str] = []
        if self.partial.exists():
            data = self.partial.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]  # a line without its newline was cut by a crash: redo it
            for number, line in enumerate(whole.splitlines(), 1):
                try:
                    found.append(row_key(json.loads(line), keys))
                except (json.JSONDecodeError, AttributeError):
                    raise BadInputError(f"{self.partial}:{number}: not a JSON object; this file was not written "
                                        "by classify/gate (or was edited): move it away and run again") from None
            if len(whole) != len(data):
                os.truncate(self.partial, len(whole))
        self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return found

    def write(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode()
        if self._fd is None:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
        else:
            view = memoryview(line)
            while view:  # one write for a regular file; the loop only guards a short write
                view = view[os.write(self._fd, view):]
        self.written += 1

    def finish(self) -> None:
        """Every crop is in: make ``path`` appear, complete."""
        if self._fd is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        assert self.path is not None and self.partial is not None
        os.replace(self.partial, self.path)

    def abandon(self, error: BaseException | None = None) -> str | None:
        """Close after ``error``; a line telling the user how to complete the run, when results were kept.

        A ``FILE.partial`` that holds no result is removed, so the next run needs no ``--resume``. After a
        refused input, rerunning unchanged would stop at the same crop: the hint says to fix it first.
        """
        if self._fd is None:
            return None
        os.close(self._fd)
        self._fd = None
        assert self.partial is not None
        done = self.kept + self.written
        if done == 0:
            self.partial.unlink(missing_ok=True)
            return None
        if isinstance(error, INPUT_ERRORS):
            return (f"{done} results are in {self.partial}; rerunning as is would stop at the same crop: fix the "
                    "input named above (replace the file, or leave that crop out), then run again with --resume "
                    "to classify only the missing crops")
        return (f"{done} results are in {self.partial}; run the same command again with "
                "--resume to classify only the missing crops")
