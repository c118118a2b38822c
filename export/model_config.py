"""Triton ``config.pbtxt`` files, written through Triton's own protobuf schema.

A model is described once (``ModelDesc``: tensors, batching, labels, ensemble steps) and rendered
for one of two runtimes, one small step per config section:

- ``production``: ``platform: "onnxruntime_onnx"`` on ``KIND_GPU``, for the official Triton containers;
  an encoder whose engine is OpenVINO renders ``backend: "openvino"`` on ``KIND_CPU`` (the backend the
  official x86 containers ship), reading the same ``model.onnx``;
- ``local``: the python backend running the same ONNX file with ONNX Runtime (or OpenVINO, with the
  same compile properties), for the tritonserver binary in the nvidia-pytriton wheel.

Both renderings declare the same inputs, outputs, shapes and ensemble wiring; only the runtime
sections differ. ``RuntimeOptions`` (instances, threads, instance kind) apply to both: an encoder
gets the serving machine's cores by default, a head (``light``) one thread and no batching delay,
because its batches arrive already formed by the encoder and a lone crop should not wait twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from headserve.errors import ConfigError, RepositoryError
from headserve.export.engine import DEFAULT_ENGINE, ENGINES, openvino_properties
from headserve.export.errors import OptionsError


class DataType(enum.Enum):
    """Triton tensor types, named after the protobuf values."""

    TYPE_UINT8 = mc.TYPE_UINT8
    TYPE_FP32 = mc.TYPE_FP32
    TYPE_FP16 = mc.TYPE_FP16
    TYPE_INT64 = mc.TYPE_INT64
    TYPE_STRING = mc.TYPE_STRING


class Runtime(enum.Enum):
    PRODUCTION = "production"
    LOCAL = "local"


class InstanceKind(enum.Enum):
    """Where production instances run, named after the protobuf values."""

    KIND_GPU = mc.ModelInstanceGroup.KIND_GPU
    KIND_CPU = mc.ModelInstanceGroup.KIND_CPU


@dataclass(frozen=True)
class TensorRTOptions:
    """ONNX Runtime's TensorRT execution provider inside the onnxruntime backend (production only)."""

    precision: str = "FP16"  # precision_mode: "FP32" or "FP16"; FP16 engines are built with FP32 layer norms
    cache_dir: str = "/trt-cache"  # engine and timing caches: a writable volume (deploy/), so restarts skip builds
    max_workspace_bytes: int = 1 << 30  # scratch GPU memory TensorRT may use while building and running
    min_batch: int = 1  # optimisation profile: smallest batch the engine accepts

    def __post_init__(self) -> None:
        if self.precision not in ("FP32", "FP16"):
            # no setting recorded: "precision" is another flag's field (--precision); --tensorrt sets this one
            raise ConfigError(f"TensorRT precision {self.precision!r} is not FP32 or FP16")


AUTO_THREADS = 0  # cpu_threads: the serving machine's cores shared among the instances, read when the model loads
PRODUCTION_CPU_THREADS = 4  # cpu_threads of a production KIND_CPU instance when none is given


@dataclass(frozen=True)
class RuntimeOptions:
    """Instances, threads and placement of the ONNX models, for both runtimes."""

    kind: InstanceKind | None = None  # None: KIND_GPU in production, KIND_CPU locally
    instances: int = 1  # instances per GPU (KIND_GPU) or in total (KIND_CPU) of each encoder
    cpu_threads: int | None = None  # ONNX Runtime intra-op threads per encoder instance; None: the runtime's
    # default (production 4, local AUTO_THREADS); AUTO_THREADS: the machine's cores / instances at load time
    tensorrt: TensorRTOptions | None = None  # None: CUDA execution provider only (production)
    warmup: bool = True  # model_warmup at load, so the first client request does not pay for arena growth

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise OptionsError.bad_value("instances", self.instances, "a model needs at least one instance")
        if self.cpu_threads is not None and self.cpu_threads < 0:
            raise OptionsError.bad_value("cpu_threads", self.cpu_threads, "use 0 for the machine's cores, or a count")

    def kind_for(self, runtime: "Runtime") -> InstanceKind:
        if self.kind is not None:
            return self.kind
        return InstanceKind.KIND_GPU if runtime is Runtime.PRODUCTION else InstanceKind.KIND_CPU

    def threads_for(self, runtime: "Runtime") -> int:
        if self.cpu_threads is not None:
            return self.cpu_threads
        return PRODUCTION_CPU_THREADS if runtime is Runtime.PRODUCTION else AUTO_THREADS


ProductionOptions = RuntimeOptions  # the name before the options applied to the local runtime too


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: DataType
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    label_filename: str | None = None  # classification extension: one label per class, in order


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    input_map: Mapping[str, str]  # step's tensor name -> ensemble tensor name
    output_map: Mapping[str, str]  # step's tensor name -> ensemble tensor name
    version: int = -1  # the composing model's version; -1 is its newest. Head steps are pinned: an ensemble
    # publishes one head version's classes, so it must never run another version of that head


@dataclass(frozen=True)
class ModelDesc:
    """One model of the repository, independent of the runtime that serves it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 64
    steps: tuple[EnsembleStep, ...] = ()  # non-empty: this model is an ensemble
    parameters: Mapping[str, str] = field(default_factory=dict)  # published to clients (classes, encoder, ...)
    preferred_batch_sizes: tuple[int, ...] = (8, 32)
    max_queue_delay_us: int = 2000  # how long dynamic batching waits to fill a batch
    ort_level: str = "all"  # ONNX Runtime graph optimisation level: "all", or "extended" for fp16 graphs
    python_model: bool = False  # served by its own model.py (no ONNX graph) on CPU in both runtimes
    light: bool = False  # head-sized graph: one thread and instance; the options' counts are for encoders
    keep_versions: int = 1  # versions Triton keeps loaded; heads keep 2 so a request in flight on ensemble
    # version N finishes on head version N while N + 1 is swapped in
    dynamic_batching: bool = True  # False only to measure what batching buys (benchmarks)
    engine: str = DEFAULT_ENGINE  # what runs the ONNX graph: "onnxruntime" or "openvino" (export/engine.py)
    engine_precision: str = "fp32"  # the engine's compute precision (OpenVINO: fp32 or bf16)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise OptionsError(f"model {self.name}: engine {self.engine!r} is not one of {', '.join(ENGINES)}").about(
                "engine", self.engine)

    @property
    def is_onnx(self) -> bool:
        return not self.steps and not self.python_model

    @property
    def is_ensemble(self) -> bool:
        return bool(self.steps)


def render(desc: ModelDesc, runtime: Runtime, options: ProductionOptions | None = None) -> mc.ModelConfig:
    """The config of ``desc`` for ``runtime``; tensors, parameters and wiring do not depend on the runtime."""
    options = options or RuntimeOptions()
    config = mc.ModelConfig(name=desc.name, max_batch_size=desc.max_batch_size)
    _set_tensors(config, desc)
    _set_parameters(config, desc)
    if desc.keep_versions > 1:
        config.version_policy.latest.num_versions = desc.keep_versions
    if desc.is_ensemble:
        _set_ensemble(config, desc)
        return config
    if desc.python_model:
        _set_python_model(config, desc, runtime, options)
        return config
    _set_runtime(config, desc, runtime, options)
    _set_graph_level(config, desc, runtime)
    _set_batching(config, desc)
    _set_instance_group(config, desc, runtime, options)
    if runtime is Runtime.PRODUCTION and options.tensorrt is not None and desc.engine == "onnxruntime":
        _set_tensorrt(config, desc, options.tensorrt)
    # A non-batching model (the region encoder: an image and its boxes) gets no warm-up: Triton's warm-up data is
    # zeros or random bytes, and neither is a box with area (zeros pool nothing; random floats are no coordinates).
    if options.warmup and desc.max_batch_size > 0:
        # Locally the graphs run on a CPU shared with everything else: warm up at batch 1 only. The local
        # runner refuses NaN/Inf inputs, and random bytes read as floats hold some about once in 256 values.
        local = runtime is Runtime.LOCAL
        _set_warmup(config, desc, largest=not local, zero_floats=local)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt with the schema; raises text_format.ParseError naming line and column."""
    return text_format.Parse(text, mc.ModelConfig())


def read_config(path: Path) -> mc.ModelConfig:
    """The config.pbtxt at ``path``; one that does not read or parse raises ``RepositoryError`` naming the file.

    A repository's files are the user's input (edited by hand, cut short by a full disk): a bad one is
    refused by name rather than surfacing as the parser's exception.
    """
    try:
        return parse(path.read_text())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} is not a valid Triton ModelConfig ({exc}); correct it, or remove "
                              f"{path.parent} and export that model again") from None
    except OSError as exc:
        raise RepositoryError(f"{path} cannot be read ({exc.strerror or exc})") from None


def parameters_of(config: mc.ModelConfig) -> dict[str, str]:
    """A config's string parameters as a plain dict (headserve publishes every parameter as a string)."""
    return {k: v.string_value for k, v in config.parameters.items()}


def _set_tensors(config: mc.ModelConfig, desc: ModelDesc) -> None:
    for spec in desc.inputs:
        config.input.add(name=spec.name, data_type=spec.dtype.value, dims=list(spec.dims))
    for spec in desc.outputs:
        out = config.output.add(name=spec.name, data_type=spec.dtype.value, dims=list(spec.dims))
        if spec.label_filename:
            out.label_filename = spec.label_filename


def _set_parameters(config: mc.ModelConfig, desc: ModelDesc) -> None:
    for key, value in sorted(desc.parameters.items()):
        config.parameters[key].string_value = value


def _set_ensemble(config: mc.ModelConfig, desc: ModelDesc) -> None:
    config.platform = "ensemble"
    for step in desc.steps:
        s = config.ensemble_scheduling.step.add(model_name=step.model, model_version=step.version)
        s.input_map.update(step.input_map)
        s.output_map.update(step.output_map)


def _set_runtime(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime, options: RuntimeOptions) -> None:
    RUNTIME_SETTERS[desc.engine](config, desc, runtime, options)


def _set_openvino(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime, options: RuntimeOptions) -> None:
    """OpenVINO on the CPU: Triton's openvino backend in production, the runner's OpenVINO engine locally.

    Production parameters are the backend's (triton-inference-server/openvino_backend): it reads the ONNX
    file itself (``default_model_filename``), takes INFERENCE_NUM_THREADS, NUM_STREAMS and PERFORMANCE_HINT
    as OpenVINO properties, and bf16 only as HINT_BF16 "YES" (it has no way to ask for f32: on CPUs with
    AMX, OpenVINO computes bf16 by default, so fp32 there is ONNX Runtime's). Locally the same properties
    travel as ``ov_<PROPERTY>`` parameters that the runner passes to ``compile_model``.
    """
    if options.kind is InstanceKind.KIND_GPU:
        raise OptionsError(f"model {desc.name}: engine openvino runs on a CPU; use CPU instances, or "
                           "`engine` onnxruntime for GPU instances")
    threads = 1 if desc.light else options.threads_for(runtime)
    props = openvino_properties(desc.engine_precision, threads if runtime is Runtime.PRODUCTION else 0)
    if runtime is Runtime.PRODUCTION:
        config.backend = "openvino"
        config.default_model_filename = "model.onnx"
        props["INFERENCE_NUM_THREADS"] = str(threads or PRODUCTION_CPU_THREADS)
        precision = props.pop("INFERENCE_PRECISION_HINT")
        if precision == "bf16":
            props["HINT_BF16"] = "YES"
        for key, value in props.items():
            config.parameters[key].string_value = value
    else:
        config.backend = "python"
        config.parameters["onnx_file"].string_value = "model.onnx"
        config.parameters["intra_op_threads"].string_value = str(threads)
        config.parameters["engine"].string_value = "openvino"
        for key, value in props.items():
            config.parameters[f"ov_{key}"].string_value = value


def _set_onnxruntime(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime, options: RuntimeOptions) -> None:
    kind = options.kind_for(runtime)
    if runtime is Runtime.PRODUCTION:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        threads = options.threads_for(runtime) if kind is InstanceKind.KIND_CPU and not desc.light else 1
        config.parameters["intra_op_thread_count"].string_value = str(threads or PRODUCTION_CPU_THREADS)
        config.parameters["inter_op_thread_count"].string_value = "1"
    else:
        # The python backend's instances stay KIND_CPU (a GPU instance group would fail to load on a
        # machine without one); the runner puts ONNX Runtime on CUDA itself, falling back with a logged reason.
        config.backend = "python"
        config.parameters["onnx_file"].string_value = "model.onnx"
        config.parameters["intra_op_threads"].string_value = "1" if desc.light else str(options.threads_for(runtime))
        config.parameters["execution_provider"].string_value = "cuda" if kind is InstanceKind.KIND_GPU else "cpu"


RUNTIME_SETTERS = {"onnxruntime": _set_onnxruntime, "openvino": _set_openvino}  # engine -> its runtime section


def _set_python_model(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime, options: RuntimeOptions) -> None:
    """CPU work (decoding): python backend everywhere; production runs one instance per CPU thread budget.

    No model_warmup: random bytes are not an image, and a failed warm-up would fail the load.
    """
    config.backend = "python"
    _set_batching(config, desc)
    count = (options.threads_for(runtime) or PRODUCTION_CPU_THREADS) if runtime is Runtime.PRODUCTION else 1
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def _set_graph_level(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime) -> None:
    if desc.ort_level == "all" or desc.engine != "onnxruntime":
        return  # both runtimes default to every optimisation
    if runtime is Runtime.PRODUCTION:
        config.optimization.graph.level = 1  # the onnxruntime backend's "basic and extended"
    else:
        config.parameters["graph_optimization_level"].string_value = desc.ort_level


def _set_batching(config: mc.ModelConfig, desc: ModelDesc) -> None:
    if not desc.dynamic_batching:
        return
    sizes = [b for b in desc.preferred_batch_sizes if b <= desc.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(sizes)
    config.dynamic_batching.max_queue_delay_microseconds = 0 if desc.light else desc.max_queue_delay_us


def _set_instance_group(config: mc.ModelConfig, desc: ModelDesc, runtime: Runtime, options: RuntimeOptions) -> None:
    if runtime is Runtime.PRODUCTION:
        kind = InstanceKind.KIND_CPU if not ENGINES[desc.engine].gpu else options.kind_for(runtime)
        config.instance_group.add(count=options.instances, kind=kind.value)
    else:
        count = 1 if desc.light else options.instances
        config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def _shapes(desc: ModelDesc, batch: int) -> str:
    """TensorRT profile shapes, "name:BxD1xD2,...", for one batch size."""
    return ",".join(f"{t.name}:" + "x".join(str(d) for d in (batch, *t.dims)) for t in desc.inputs)


def _set_tensorrt(config: mc.ModelConfig, desc: ModelDesc, trt: TensorRTOptions) -> None:
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    opt = max((b for b in desc.preferred_batch_sizes if b <= desc.max_batch_size), default=desc.max_batch_size)
    cache = f"{trt.cache_dir.rstrip('/')}/{desc.name}"
    accel.parameters.update({
        "precision_mode": trt.precision,
        "max_workspace_size_bytes": str(trt.max_workspace_bytes),
        "trt_layer_norm_fp32_fallback": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": _shapes(desc, trt.min_batch),
        "trt_profile_opt_shapes": _shapes(desc, opt),
        "trt_profile_max_shapes": _shapes(desc, desc.max_batch_size),
    })


def _set_warmup(config: mc.ModelConfig, desc: ModelDesc, largest: bool, zero_floats: bool = False) -> None:
    """A warm-up request with random inputs at batch 1 and (``largest``) at the largest preferred batch.

    ``zero_floats``: float inputs get zeros instead of random bytes, which may read as NaN or Inf.
    """
    sizes = sorted({1, *(b for b in desc.preferred_batch_sizes if b <= desc.max_batch_size)})
    for batch in sorted({sizes[0], sizes[-1] if largest else 1}):
        warmup = config.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch, count=1)
        for t in desc.inputs:
            zero = zero_floats and t.dtype in (DataType.TYPE_FP32, DataType.TYPE_FP16)
            data = {"zero_data": True} if zero else {"random_data": True}
            warmup.inputs[t.name].CopyFrom(mc.ModelWarmup.Input(data_type=t.dtype.value, dims=list(t.dims),
                                                                **data))
