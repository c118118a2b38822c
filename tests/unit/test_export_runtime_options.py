"""Instances, threads and instance kind apply to both runtimes; heads stay light."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from headserve.export.errors import OptionsError
from headserve.export.model_config import (
    AUTO_THREADS,
    DataType,
    InstanceKind,
    ModelDesc,
    Runtime,
    RuntimeOptions,
    TensorSpec,
    render,
)


def _desc(light: bool = False) -> ModelDesc:
    return ModelDesc("m", (TensorSpec("pixels", DataType.TYPE_UINT8, (8, 8, 3)),),
                     (TensorSpec("embedding", DataType.TYPE_FP32, (4,)),), light=light)


def test_a_local_encoder_gets_the_machines_cores_by_default_and_one_instance():
    config = render(_desc(), Runtime.LOCAL)
    assert config.parameters["intra_op_threads"].string_value == str(AUTO_THREADS)
    assert config.parameters["execution_provider"].string_value == "cpu"
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_local_instances_and_threads_are_honoured():
    config = render(_desc(), Runtime.LOCAL, RuntimeOptions(instances=2, cpu_threads=3))
    assert config.parameters["intra_op_threads"].string_value == "3"
    assert [g.count for g in config.instance_group] == [2]


def test_local_instance_kind_gpu_asks_the_runner_for_cuda_on_cpu_instances():
    config = render(_desc(), Runtime.LOCAL, RuntimeOptions(kind=InstanceKind.KIND_GPU))
    assert config.parameters["execution_provider"].string_value == "cuda"
    # The python backend's instance stays on KIND_CPU so the model loads on a machine without a GPU too.
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]


def test_a_light_model_gets_one_thread_one_instance_and_no_batching_delay_in_both_runtimes():
    options = RuntimeOptions(kind=InstanceKind.KIND_CPU, instances=3, cpu_threads=8)
    local = render(_desc(light=True), Runtime.LOCAL, options)
    production = render(_desc(light=True), Runtime.PRODUCTION, options)
    assert local.parameters["intra_op_threads"].string_value == "1"
    assert [g.count for g in local.instance_group] == [1]
    assert production.parameters["intra_op_thread_count"].string_value == "1"
    for config in (local, production):
        assert config.dynamic_batching.max_queue_delay_microseconds == 0
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]


def test_production_defaults_are_unchanged_gpu_instances_and_four_cpu_threads():
    gpu = render(_desc(), Runtime.PRODUCTION)
    cpu = render(_desc(), Runtime.PRODUCTION, RuntimeOptions(kind=InstanceKind.KIND_CPU))
    assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert gpu.parameters["intra_op_thread_count"].string_value == "1"
    assert cpu.parameters["intra_op_thread_count"].string_value == "4"


def test_dynamic_batching_can_be_left_out_for_measurement():
    desc = ModelDesc("m", _desc().inputs, _desc().outputs, dynamic_batching=False)
    assert not render(desc, Runtime.LOCAL).HasField("dynamic_batching")


@pytest.mark.parametrize("kwargs, match", [
    ({"instances": 0}, "^instances 0: a model needs at least one instance$"),
    ({"cpu_threads": -1}, "^cpu_threads -1: use 0"),
])
def test_bad_counts_are_refused_with_the_option_named(kwargs, match):
    with pytest.raises(OptionsError, match=match) as raised:
        RuntimeOptions(**kwargs)
    assert raised.value.setting == next(iter(kwargs))  # the app spells the field as its flag
