"""Typed errors shared by training, export, serving and the client.

Every message names the bad value, where it came from, and what to do about it; the CLI prints the
message without a traceback.
"""

from __future__ import annotations

from typing import TypeVar

_E = TypeVar("_E", bound="HeadserveError")


class HeadserveError(Exception):
    """Base of every error headserve raises on purpose.

    An error about one setting's value is made with ``bad_value``: it keeps the setting's name (the config
    field), the value and the problem apart, so the message names the field here and an application can
    name its own spelling of that setting instead (the command line names its flag).
    """

    setting: str | None = None  # the config field whose value is bad; None when no single setting is
    value: object = None  # that field's bad value
    problem: str = ""  # what is wrong with it and what to do, without naming the setting

    @classmethod
    def bad_value(cls: type[_E], setting: str, value: object, problem: str) -> _E:
        """``setting value: problem``, with the three parts kept for ``spelled``."""
        exc = cls(f"{setting} {value}: {problem}")
        exc.setting, exc.value, exc.problem = setting, value, problem
        return exc

    def about(self: _E, setting: str, value: object = None) -> _E:
        """Record which setting held ``value`` (None: which setting would fix it) without changing the message."""
        self.setting, self.value = setting, value
        return self

    def spelled(self, name: str) -> str:
        """This error's message with the setting spelled ``name`` (e.g. a flag); as is when no setting is known."""
        if self.setting is None:
            return str(self)
        if self.problem:
            return f"{name} {self.value}: {self.problem}"
        if f"`{self.setting}`" in str(self):  # the message names the setting itself, in backticks
            return str(self).replace(f"`{self.setting}`", name)
        if self.value is None:
            return f"{self} (set it with {name})"
        return f"{self} ({name} {self.value})"


class UnknownEncoderError(HeadserveError, KeyError):
    """An encoder name that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EncoderLoadError(HeadserveError):
    """Weights could not be loaded: gated hub model, no network, or a broken local directory."""


class ConfigError(HeadserveError, ValueError):
    """A config field set to a value it cannot take (raised by the config's ``__post_init__``)."""


class PreprocessSpecError(ConfigError):
    """A stored preprocessing spec (meta.json, a model's parameters) that this headserve cannot read exactly:
    a field it does not know, a missing field, or a value of the wrong kind."""


class DatasetError(HeadserveError):
    """A dataset path or file that cannot be used."""


class ImageDecodeError(HeadserveError):
    """An image file or buffer that does not decode."""


class RegionBoxError(HeadserveError, ValueError):
    """A box that region pooling cannot pool: zero area, outside the image, not finite, or a bad array.

    ``index`` is the box's position in what the caller passed (None when the whole array is at fault) and
    ``box`` its value, so a caller can name the object (its detector's row) in its own terms.
    """

    def __init__(self, message: str, index: int | None = None, box: tuple[float, ...] | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.box = box


class RegionModeError(ConfigError):
    """Region pooling asked of an encoder family that cannot give it (its reason is the message)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose decoded size exceeds the pixel cap (a decompression bomb, or a photo too big to serve)."""


class ClassNameError(HeadserveError, ValueError):
    """A class name that cannot travel through labels files, config parameters and prompts unchanged."""


class ArtifactError(HeadserveError):
    """A head artifact (meta.json + safetensors) that is missing or inconsistent."""


class WeightsMismatchError(ArtifactError):
    """An artifact's weights file whose digest is not the one its meta.json recorded: the two do not belong together."""


class HeadserveWarning(UserWarning):
    """Base of the warnings headserve gives on purpose; the CLI prints each as one line, as it does errors."""


class UnverifiedWeightsWarning(HeadserveWarning):
    """An artifact saved before meta.json recorded its weights' digest: it loads, but unchecked."""


class EncoderMismatchError(ArtifactError):
    """A head trained on one encoder paired with another (type, model, dim or fingerprint)."""


class ExportParityError(HeadserveError):
    """An exported ONNX graph disagrees with PyTorch beyond tolerance.

    ``diffs`` maps each output name to its maximum absolute difference; ``failed`` maps each output that
    broke its tolerance to how (by default: its max |diff| against ``atol``).
    """

    def __init__(self, model: str, diffs: dict[str, float], atol: float,
                 failed: dict[str, str] | None = None) -> None:
        self.model = model
        self.diffs = diffs
        self.atol = atol
        if failed is None:
            failed = {name: f"max |diff| {d:.3g} > atol {atol:g}" for name, d in diffs.items() if not d <= atol}
        self.failed = failed
        broken = "; ".join(f"{name}: {why}" for name, why in failed.items())
        lines = ", ".join(f"{name}: max |diff| {d:.3g}" for name, d in diffs.items())
        super().__init__(
            f"ONNX export of {model} differs from PyTorch beyond its tolerance ({broken}; every output: {lines}). "
            "The ONNX file was not written; check the opset and any data-dependent ops."
        )


class RepositoryError(HeadserveError):
    """A model repository that is invalid or cannot be written."""


class ParameterError(RepositoryError, ValueError):
    """A served model's published parameter that is missing or cannot be read; ``key`` names it."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class MissingParameterError(ParameterError):
    """A parameter that the record needs is not published."""


class MalformedParameterError(ParameterError):
    """A published parameter whose value does not parse as the record's field."""


class DriftError(HeadserveError):
    """A drift reference or window that cannot be compared: empty, too small, other classes, malformed."""


class DriftConfigError(DriftError, ConfigError):
    """Drift thresholds (``DriftThresholds``) set to values no comparison can use."""


class DriftReportError(HeadserveError):
    """A drift report that cannot be written from what it was given."""


class DeviceError(HeadserveError):
    """A device that is not available, or not written as one."""


class PrecisionError(HeadserveError):
    """Embeddings at a lower precision that leave its tolerance of fp32 (or are not finite)."""


class ServerError(HeadserveError):
    """The local tritonserver could not be started or did not become ready."""


class RepositoryLockTimeout(RepositoryError):
    """Another writer held the repository's lock for longer than this writer would wait."""


class PortInUseError(ServerError):
    """A port the local server was asked to use is taken by another process."""


class ServerExitedError(ServerError):
    """The local tritonserver exited while it was meant to be serving."""


class StubUnhealthyError(ServerError):
    """A python-backend stub process died, so its model fails every request although Triton says ready."""
