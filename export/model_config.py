"""Triton ``config.pbtxt`` files, written through Triton's own protobuf schema.

A model is described once (``ModelDesc``: tensors, batching, labels, ensemble steps) and rendered
for one of two runtimes, one small step per config section:

- ``production``: ``platform: "onnxruntime_onnx"`` on ``KIND_GPU``, for the official Triton containers;
- ``local``: the python backend running the same ONNX file with ONNX Runtime, for the tritonserver
  binary in the nvidia-pytriton wheel.

Both renderings declare the same inputs, outputs, shapes and ensemble wiring; only the runtime
sections differ.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


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

    @property
    def is_ensemble(self) -> bool:
        return bool(self.steps)


def render(desc: ModelDesc, runtime: Runtime) -> mc.ModelConfig:
    config = mc.ModelConfig(name=desc.name, max_batch_size=desc.max_batch_size)
    _set_tensors(config, desc)
    _set_parameters(config, desc)
    if desc.is_ensemble:
        _set_ensemble(config, desc)
        return config
    _set_runtime(config, runtime)
    _set_batching(config, desc)
    _set_instance_group(config, runtime)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parse a config.pbtxt with the schema; raises text_format.ParseError naming line and column."""
    return text_format.Parse(text, mc.ModelConfig())


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
        s = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        s.input_map.update(step.input_map)
        s.output_map.update(step.output_map)


def _set_runtime(config: mc.ModelConfig, runtime: Runtime) -> None:
    if runtime is Runtime.PRODUCTION:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
    else:
        config.backend = "python"
        config.parameters["onnx_file"].string_value = "model.onnx"
        config.parameters["intra_op_threads"].string_value = "1"


def _set_batching(config: mc.ModelConfig, desc: ModelDesc) -> None:
    sizes = [b for b in desc.preferred_batch_sizes if b <= desc.max_batch_size]
    config.dynamic_batching.preferred_batch_size.extend(sizes)
    config.dynamic_batching.max_queue_delay_microseconds = desc.max_queue_delay_us


def _set_instance_group(config: mc.ModelConfig, runtime: Runtime) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if runtime is Runtime.PRODUCTION else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=1, kind=kind)
