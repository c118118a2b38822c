"""The engine that runs an encoder's ONNX file on a CPU, and the parity check that every engine must pass.

ONNX Runtime's CPU provider has no bf16 kernels and already runs a ViT near the fp32 matrix-multiply
ceiling, so fp32 has no room left on a CPU. OpenVINO runs the very same ``model.onnx`` with bf16
arithmetic where the CPU has it (AVX-512 BF16, AMX), about twice the fp32 ceiling. Lower precision is
never trusted blindly: ``check_parity`` embeds a sample of real crops with the fp32 PyTorch encoder and
with the engine, and refuses the engine below its minimum cosine (``EngineParityError``), reporting
how often a head's top-1 decision agrees on the same sample.

Engines are data (``ENGINES``): which precisions each runs, on which instance kinds. The OpenVINO
compile properties (``openvino_properties``) are rendered into the config (``export/model_config.py``)
and read back by the local runner, and training's extraction compiles with the same function, so the
model that trains a head is the model that serves it.

This module imports no torch at import time: ``export/model_config.py`` renders with it.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from headserve.errors import ConfigError
from headserve.export.errors import EngineChoiceError, EngineParityError

if TYPE_CHECKING:
    from headserve.backbones import EncoderGraph
    from headserve.encoders import PreprocessSpec


@dataclass(frozen=True)
class EngineSpec:
    """One runtime for an encoder's ONNX file."""

    name: str  # the --engine value and the config's engine parameter
    precisions: tuple[str, ...]  # compute precisions it runs; the first is its default
    gpu: bool  # may run on KIND_GPU instances (ONNX Runtime's CUDA/TensorRT providers)
    note: str  # what it is for, in messages


ENGINES: dict[str, EngineSpec] = {e.name: e for e in (
    EngineSpec("onnxruntime", ("fp32", "fp16"), True, "ONNX Runtime: CPU fp32, or CUDA/TensorRT on GPUs"),
    EngineSpec("openvino", ("fp32", "bf16"), False, "OpenVINO on a CPU: fp32, or bf16 where the CPU has it"),
)}
DEFAULT_ENGINE = "onnxruntime"  # what every repository written before engines served with
# Minimum cosine of each embedding of the sample to the fp32 PyTorch encoder's. bf16 keeps 8 mantissa
# bits; a ViT's L2-normalised embedding keeps about 0.9999 under OpenVINO's bf16 (fp32 accumulation).
# An engine's fp32 differs from PyTorch by summation order only.
MIN_COSINE: dict[str, float] = {"fp32": 0.99999, "bf16": 0.999, "fp16": 0.998}
CHECK_SAMPLE = 32  # crops the export check embeds (bundled images, several boxes each)


@dataclass(frozen=True)
class EngineChoice:
    """The engine and precision an encoder is exported for, and why (printed by the export)."""

    engine: str  # a key of ENGINES
    precision: str  # one of that engine's precisions
    reason: str  # one sentence: why this pair
    fallback: bool = False  # auto chose bf16: a failed check falls back to fp32 instead of refusing

    def __post_init__(self) -> None:
        spec = ENGINES.get(self.engine)
        if spec is None:
            raise EngineChoiceError.bad_value("engine", self.engine, f"is not one of {', '.join(ENGINES)}")
        if self.precision not in spec.precisions:
            raise EngineChoiceError.bad_value(
                "precision", self.precision,
                f"{self.engine} runs {', '.join(spec.precisions)} (bf16 is OpenVINO's on a CPU, fp16 ONNX Runtime's "
                "on a GPU)")


def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this machine's CPU (e.g. FP32, BF16, INT8); empty without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return frozenset()
    return frozenset(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def choose_engine(engine: str = "auto", precision: str = "auto", gpu: bool = False,
                  capabilities: frozenset[str] | None = None) -> EngineChoice:
    """The engine and precision for ``--engine``/``--precision`` ("auto" for either picks it).

    auto on a GPU instance kind: ONNX Runtime (CUDA/TensorRT). auto on a CPU whose OpenVINO capabilities
    include BF16: OpenVINO bf16, falling back to fp32 if the parity check refuses it; on a CPU without
    bf16: OpenVINO fp32. ``--precision fp32`` alone keeps ONNX Runtime fp32, the engine every repository
    served with before. ``capabilities`` defaults to this machine's (``cpu_capabilities``); tests pass
    another CPU's answer.
    """
    if engine == "openvino" and precision == "bf16":
        caps = cpu_capabilities() if capabilities is None else capabilities
        if "BF16" not in caps:  # OpenVINO would quietly compute f32 and the repository would say bf16
            raise EngineChoiceError.bad_value("precision", precision, f"this CPU has no bf16 arithmetic (OpenVINO "
                                              f"capabilities {', '.join(sorted(caps)) or 'none'}); export fp32 here "
                                              "(`precision` fp32)")
    if engine != "auto":
        why = "asked for"
    elif gpu:
        engine, why = DEFAULT_ENGINE, "GPU instances run ONNX Runtime's CUDA/TensorRT providers"
    elif precision in ("fp32", "fp16"):
        engine, why = DEFAULT_ENGINE, f"{precision} asked for, which ONNX Runtime serves as before"
    else:
        caps = cpu_capabilities() if capabilities is None else capabilities
        listed = ", ".join(sorted(caps))
        if not caps:
            engine, why = DEFAULT_ENGINE, "OpenVINO is not installed (pip install 'headserve[full]'), so fp32"
        elif "BF16" in caps:
            engine, why = "openvino", f"this CPU computes bf16 (OpenVINO capabilities {listed})"
        else:
            engine, why = "openvino", (f"this CPU has no bf16 arithmetic (OpenVINO capabilities {listed}; AVX-512 "
                                       "BF16 or AMX bring it), so fp32")
        if precision == "bf16" and "BF16" not in caps:
            raise EngineChoiceError.bad_value("precision", precision, why.replace(", so fp32", "; export fp32 here "
                                                                                   "(`precision` fp32)"))
        if precision == "auto":
            precision = "bf16" if "BF16" in caps else "fp32"
            return EngineChoice(engine, precision, f"{engine} {precision}: {why}", fallback=precision == "bf16")
    if engine not in ENGINES:
        raise EngineChoiceError.bad_value("engine", engine, f"is not auto or one of {', '.join(ENGINES)}")
    if gpu and not ENGINES[engine].gpu:
        raise EngineChoiceError.bad_value("engine", engine, "runs on a CPU only; GPU instances "
                                                            "run ONNX Runtime")
    if precision == "auto" and engine == "openvino":
        bf16 = "BF16" in (cpu_capabilities() if capabilities is None else capabilities)
        return EngineChoice(engine, "bf16" if bf16 else "fp32", f"{engine} {'bf16' if bf16 else 'fp32'}: engine asked "
                            f"for, {'bf16 where' if bf16 else 'fp32: no bf16 on'} this CPU", fallback=bf16)
    if precision == "auto":
        precision = ENGINES[engine].precisions[0]
    return EngineChoice(engine, precision, f"{engine} {precision}: {why}")


def openvino_properties(precision: str, threads: int) -> dict[str, str]:
    """OpenVINO CPU compile properties for ``precision`` at ``threads`` (0: OpenVINO's own count).

    One stream with the latency hint: Triton's dynamic batcher forms the batches and each model
    instance runs one at a time, so the cores go to one batch rather than to parallel requests.
    The precision is set in both directions: on CPUs with AMX, OpenVINO defaults to bf16 by itself.
    """
    props = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "NUM_STREAMS": "1",
             "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        props["INFERENCE_NUM_THREADS"] = str(threads)
    return props


class OpenVinoEncoder:
    """An encoder's ONNX file compiled by OpenVINO: (B, S, S, 3) uint8 -> (B, D) float32 embedding."""

    def __init__(self, onnx_path: str | os.PathLike, precision: str, threads: int = 0) -> None:
        import openvino as ov

        from headserve.contract import EMBEDDING

        core = ov.Core()
        self.precision = precision
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU",
                                           openvino_properties(precision, threads))
        self._output = self.compiled.output(EMBEDDING)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from headserve.contract import PIXELS

        request = self.compiled.create_infer_request()  # one per call: callers may run batches on several threads
        result = request.infer({PIXELS: np.ascontiguousarray(pixels)})
        return np.asarray(result[self._output], dtype=np.float32).copy()


class OnnxRuntimeEncoder:
    """An encoder's ONNX file in ONNX Runtime on the CPU (the fp32 engine every repository had before)."""

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.precision = precision
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from headserve.contract import EMBEDDING, PIXELS

        return self.session.run([EMBEDDING], {PIXELS: np.ascontiguousarray(pixels)})[0].astype(np.float32)


ENGINE_RUNNERS: dict[str, Callable[..., Callable[[np.ndarray], np.ndarray]]] = {
    "onnxruntime": OnnxRuntimeEncoder,
    "openvino": OpenVinoEncoder,
}


def engine_encoder(onnx_path: str | os.PathLike, engine: str, precision: str,
                   threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The in-process runner of ``engine`` at ``precision`` over an encoder's ONNX file."""
    EngineChoice(engine, precision, "")  # an unknown engine or a precision it does not run fails here
    return ENGINE_RUNNERS[engine](onnx_path, precision, threads)


def compile_graph(graph: "EncoderGraph", name: str, input_size: int, engine: str, precision: str,
                  threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The encoder ``graph`` exported to ONNX exactly as ``export encoder`` writes it, then compiled by ``engine``.

    Training's extraction (``--engine openvino``) encodes with this, so a head is trained on the embeddings
    the served model computes. The ONNX file lives in a temporary directory only while it compiles.
    """
    from headserve.export.onnx_export import EncoderExport, encoder_graph_spec, export_onnx

    with tempfile.TemporaryDirectory(prefix="headserve-engine-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(EncoderExport(graph), encoder_graph_spec(name, input_size), path)
        return engine_encoder(path, engine, precision, threads)


# ---------------------------------------------------------------------------------------------
# The parity check


@dataclass(frozen=True)
class ParityFigures:
    """How an engine's embeddings compare with the fp32 PyTorch encoder's on one sample of crops."""

    engine: str  # the engine checked
    precision: str  # its precision
    min_cosine: float  # lowest cosine between the two embeddings of one crop
    mean_cosine: float  # mean over the sample
    threshold: float  # the precision's minimum (MIN_COSINE)
    sample: int  # crops compared
    source: str  # where the crops came from
    top1_agreement: float | None = None  # share of crops whose head's top-1 class agrees; None: no head at hand

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ParityFigures":
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})

    def summary(self) -> str:
        agreement = f", top-1 agreement {self.top1_agreement:.3f}" if self.top1_agreement is not None else ""
        return (f"min cosine {self.min_cosine:.5f} (mean {self.mean_cosine:.5f}, minimum {self.threshold}) to the fp32 "
                f"PyTorch encoder on {self.sample} crops ({self.source}){agreement}")


def cosines(reference: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) arrays; a non-finite row counts as -1 (never passes)."""
    a = reference.astype(np.float64)
    b = got.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    return np.where(np.isfinite(cos), cos, -1.0)


def parity_figures(reference: np.ndarray, got: np.ndarray, engine: str, precision: str, source: str,
                   decide: Callable[[np.ndarray], np.ndarray] | None = None) -> ParityFigures:
    """Compare an engine's embeddings ``got`` with the fp32 PyTorch ``reference`` of the same crops.

    ``decide`` maps (N, D) embeddings to (N, C) scores (the head to be served); its top-1 agreement is
    reported, not checked: a head trained on few crops can flip a near tie at any precision.
    """
    cos = cosines(reference, got)
    agreement = None
    if decide is not None:
        agreement = float(np.mean(decide(reference).argmax(1) == decide(got).argmax(1)))
    return ParityFigures(engine, precision, float(cos.min()), float(cos.mean()), MIN_COSINE[precision], len(cos),
                         source, agreement)


def check_parity(encoder: str, reference: np.ndarray, got: np.ndarray, engine: str, precision: str, source: str,
                 decide: Callable[[np.ndarray], np.ndarray] | None = None) -> ParityFigures:
    """``parity_figures``, raising ``EngineParityError`` when the sample's minimum cosine is below the precision's."""
    figures = parity_figures(reference, got, engine, precision, source, decide)
    if not figures.passed:
        raise EngineParityError(encoder, figures)
    return figures


def sample_pixels(preprocess: "PreprocessSpec", count: int = CHECK_SAMPLE) -> tuple[np.ndarray, str]:
    """``count`` real crops at the encoder's input, from the photographs scikit-image bundles.

    Real photographs, not noise: a precision's error depends on the activations real images give. Each
    photograph yields its whole frame and quarter boxes, resized by the encoder's own rule.
    """
    import skimage.data as data
    from PIL import Image

    from headserve.preprocess import resize_for_encoder

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
             "coins", "brick", "grass", "page", "moon")  # files in the wheel: nothing is downloaded
    crops = []
    for name in names:
        array = getattr(data, name)()
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        image = Image.fromarray(array).convert("RGB")
        w, h = image.size
        for box in ((0, 0, w, h), (0, 0, w // 2, h // 2), (w // 2, h // 2, w, h), (w // 4, h // 4, 3 * w // 4, 3 * h // 4)):
            crops.append(resize_for_encoder(image.crop(box), preprocess))
            if len(crops) == count:
                return np.stack(crops), f"{count} crops of scikit-image's bundled photographs"
    return np.stack(crops), f"{len(crops)} crops of scikit-image's bundled photographs"


def combined_min_cosine(first: float, second: float) -> float:
    """The lowest cosine two embeddings can have when each keeps ``first`` / ``second`` to a third one.

    Angles add at most (the triangle inequality on the sphere): a head trained on one engine's embeddings
    and served by another is as far from its training as both engines' angles to fp32 together.
    """
    angle = math.acos(max(-1.0, min(1.0, first))) + math.acos(max(-1.0, min(1.0, second)))
    return math.cos(min(math.pi, angle))


def engine_parameters(choice: EngineChoice) -> dict[str, str]:
    """What an encoder model publishes about its engine: its precision, and its engine unless ONNX Runtime
    (which every repository served with before engines, and which a reader assumes when none is named).

    The check's figures go to fingerprint.json only, so a config is the same text on every machine."""
    return {"precision": choice.precision, **({"engine": choice.engine} if choice.engine != DEFAULT_ENGINE else {})}


def served_engine(params: Mapping[str, str]) -> tuple[str, str]:
    """(engine, precision) an encoder model's parameters say it is served with."""
    return params.get("engine") or DEFAULT_ENGINE, params.get("precision") or "fp32"


def check_choice_usable(choice: EngineChoice, threads: int | None) -> None:
    """Refuse, before any work, an engine this interpreter cannot run (OpenVINO not installed)."""
    if choice.engine == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ConfigError.bad_value("engine", "openvino", "is not installed here; pip install "
                                        "'headserve[full]' (it pins openvino), or export with `engine` onnxruntime"
                                        ) from None
    if threads is not None and threads < 0:
        raise ConfigError.bad_value("cpu_threads", threads, "use 0 for the machine's cores, or a count")


def trained_engine(extra: Mapping[str, object]) -> tuple[str, str, float]:
    """(engine, precision, min cosine to fp32) a head's embeddings were computed with, from meta.json's extra.

    Heads trained before engines existed were embedded by eager PyTorch, recorded as engine "torch".
    """
    described = extra.get("embedding") if isinstance(extra.get("embedding"), dict) else {}
    assert isinstance(described, dict)
    engine = str(described.get("engine") or "torch")
    precision = str(described.get("precision") or "fp32")
    cosine = described.get("min_cosine_to_fp32")
    return engine, precision, float(cosine) if isinstance(cosine, (int, float)) else 1.0
