"""Typed errors of the exporter that the shared ``headserve.errors`` does not already name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headserve.errors import ConfigError, ExportParityError, HeadserveError, RepositoryError

if TYPE_CHECKING:
    from headserve.export.engine import ParityFigures


class Fp16ParityError(ExportParityError):
    """An fp16 encoder export that produced NaN/inf or left the fp16 tolerance; nothing was written."""

    def __init__(self, model: str, diffs: dict[str, float], atol: float,
                 failed: dict[str, str] | None = None) -> None:
        super().__init__(model, diffs, atol, failed)
        nan = any(d != d or d == float("inf") for d in diffs.values())
        reason = "produces NaN or inf in float16" if nan else "exceeds the fp16 tolerance"
        self.args = (
            f"fp16 export of {model} {reason} against the fp32 PyTorch encoder "
            f"({', '.join(f'{k}: max |diff| {v:.3g}' for k, v in diffs.items())}; atol={atol:g}). "
            "Nothing was written. Export this encoder in fp32 (`precision` fp32, the default).",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class RolloutError(RepositoryError):
    """A new version that did not become ready on every replica it was sent to (or no replica was found)."""


class EngineMismatchError(RepositoryError):
    """A head trained on one engine's embeddings, refused on an encoder served by an engine too far from it."""


class OptionsError(ConfigError):
    """Runtime options that cannot be rendered (an instance count below one, negative threads)."""


class EngineChoiceError(ConfigError):
    """An engine and precision that cannot run where they were asked to (OpenVINO on a GPU, bf16 on ONNX Runtime)."""


class EngineParityError(HeadserveError):
    """An engine whose embeddings leave its precision's minimum cosine to the fp32 PyTorch encoder; nothing was written."""

    def __init__(self, encoder: str, figures: ParityFigures) -> None:
        self.encoder = encoder
        self.figures = figures
        super().__init__(
            f"encoder {encoder} on {figures.engine} {figures.precision}: minimum cosine to the fp32 PyTorch encoder "
            f"{figures.min_cosine:.5f} on {figures.sample} crops ({figures.source}) is below the {figures.precision} "
            f"minimum {figures.threshold}" + (f"; top-1 agreement {figures.top1_agreement:.3f}"
                                              if figures.top1_agreement is not None else "")
            + ". Nothing was written. Export in fp32 (`engine` onnxruntime, `precision` fp32).")
