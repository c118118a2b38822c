"""Local and production configs come from one description: same interface, different runtime sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from headserve.encoders import get_encoder
from headserve.errors import ConfigError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import (
    DataType,
    InstanceKind,
    ModelDesc,
    ProductionOptions,
    Runtime,
    TensorRTOptions,
    TensorSpec,
    parse,
    render,
)
from headserve.export.pipeline import export_head


def interface(config: mc.ModelConfig) -> tuple:
    """What a client or an ensemble step can observe of a model."""
    def tensors(ts) -> list[tuple]:
        return [(t.name, t.data_type, list(t.dims), getattr(t, "label_filename", "")) for t in ts]

    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in config.ensemble_scheduling.step]
    params = {k: v.string_value for k, v in config.parameters.items()
              if k not in ("onnx_file", "intra_op_threads", "execution_provider", "intra_op_thread_count",
                           "inter_op_thread_count")}
    return config.name, config.max_batch_size, tensors(config.input), tensors(config.output), steps, params


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[Runtime, Path]:
    root = tmp_path_factory.mktemp("runtimes")
    artifact = write_example_head(get_encoder("dinov3:tiny"), ExampleHead("dogs"), root / "dogs")
    out = {}
    for runtime in Runtime:
        export_head(artifact, root / runtime.value, runtime,
                    options=ProductionOptions(tensorrt=TensorRTOptions(precision="FP16")))
        out[runtime] = root / runtime.value
    return out


def configs(repo: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: parse(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def test_local_and_production_declare_the_same_inputs_outputs_shapes_and_wiring(repos):
    local, production = configs(repos[Runtime.LOCAL]), configs(repos[Runtime.PRODUCTION])
    assert sorted(local) == sorted(production) == ["dogs", "dogs_head", "encoder_dinov3_tiny"]
    for name in local:
        assert interface(local[name]) == interface(production[name]), name
    assert [s.model_name for s in production["dogs"].ensemble_scheduling.step] == ["encoder_dinov3_tiny", "dogs_head"]


def test_production_models_run_onnxruntime_on_gpus_with_dynamic_batching_and_warmup(repos):
    for name, config in configs(repos[Runtime.PRODUCTION]).items():
        if config.platform == "ensemble":
            assert not config.model_warmup and not config.instance_group  # ensembles only route
            continue
        assert (config.platform, config.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        # Encoders wait up to 2 ms for company; heads take the batches the encoder formed, without a wait.
        assert config.dynamic_batching.max_queue_delay_microseconds == (0 if name.endswith("_head") else 2000)
        assert [(w.batch_size, sorted(w.inputs)) for w in config.model_warmup] == [
            (1, [t.name for t in config.input]), (32, [t.name for t in config.input])]


def test_production_tensorrt_accelerator_carries_caches_and_profile_shapes(repos):
    config = configs(repos[Runtime.PRODUCTION])["encoder_dinov3_tiny"]
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt"
    params = dict(accel.parameters)
    assert params["precision_mode"] == "FP16"
    assert params["trt_engine_cache_path"] == params["trt_timing_cache_path"] == "/trt-cache/encoder_dinov3_tiny"
    assert (params["trt_profile_min_shapes"], params["trt_profile_opt_shapes"], params["trt_profile_max_shapes"]) == (
        "pixels:1x32x32x3", "pixels:32x32x32x3", "pixels:64x32x32x3")


def test_local_models_run_the_same_onnx_file_through_the_python_backend(repos):
    for name, config in configs(repos[Runtime.LOCAL]).items():
        if config.platform == "ensemble":
            continue
        assert config.backend == "python" and config.parameters["onnx_file"].string_value == "model.onnx"
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [w.batch_size for w in config.model_warmup] == [1]
        assert (repos[Runtime.LOCAL] / name / "1" / "model.py").is_file()


def test_cpu_instances_get_explicit_thread_counts():
    desc = ModelDesc("m", (TensorSpec("embedding", DataType.TYPE_FP32, (4,)),),
                     (TensorSpec("probs", DataType.TYPE_FP32, (2,)),))
    config = render(desc, Runtime.PRODUCTION, ProductionOptions(kind=InstanceKind.KIND_CPU, instances=2,
                                                                cpu_threads=3, warmup=False))
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert config.parameters["intra_op_thread_count"].string_value == "3"
    assert config.parameters["inter_op_thread_count"].string_value == "1"
    assert not config.model_warmup


def test_an_unknown_tensorrt_precision_is_refused():
    with pytest.raises(ConfigError, match="TensorRT precision 'INT4' is not FP32 or FP16"):
        TensorRTOptions(precision="INT4")
