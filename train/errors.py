"""Typed errors of training that the shared ``headserve.errors`` does not already name.

Training's configs raise ``headserve.errors.ConfigError`` (or a subclass here); a dataset that cannot be
used raises ``DatasetError``. The CLI prints each as one line, without a traceback.
"""

from __future__ import annotations

from headserve.errors import ConfigError, HeadserveError


class UnknownProfileError(HeadserveError, KeyError):
    """A recipe profile name (or a training knob) that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RecipeError(ConfigError):
    """A profile with overrides that ``TrainConfig`` refuses (out of range, unknown choice)."""


class EmbeddingStoreError(HeadserveError):
    """An embeddings store that cannot be used as asked: unfinished, damaged, or of another encoder, engine or
    precision than the run that reads it (the message names both)."""
