"""The local runtime uses the machine: encoder threads from the cores, instances honoured, and a GPU
instance kind that falls back to the CPU with its reason in the server log where no GPU can run it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.waiting import CALL_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from headserve.encoders import get_encoder
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.model_config import InstanceKind, RuntimeOptions
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig

    root = tmp_path_factory.mktemp("runtime-options")
    auto, gpu = root / "auto", root / "gpu"
    export_head(write_example_head(get_encoder("clip:tiny"), ExampleHead("auto_threads"), root / "a"), auto, "local")
    export_head(write_example_head(get_encoder("dinov3:tiny"), ExampleHead("on_gpu"), root / "g"), gpu, "local",
                options=RuntimeOptions(kind=InstanceKind.KIND_GPU, instances=2))
    with LocalTriton(ServerConfig(repository=auto)) as a, LocalTriton(ServerConfig(repository=gpu)) as g:
        yield a, g


def _ask(url: str, model: str, size: int) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    pixels = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        return client.infer(model, [inp], client_timeout=CALL_TIMEOUT_S).as_numpy("probs")


def test_the_encoder_gets_every_core_and_the_head_one_thread(served):
    auto, _ = served
    log = auto.log_tail(400)
    cores = len(os.sched_getaffinity(0))
    assert f"encoder_clip_tiny_0_0: ONNX Runtime on CPUExecutionProvider, {cores} intra-op thread(s)" in log
    assert "auto_threads_head_0_0: ONNX Runtime on CPUExecutionProvider, 1 intra-op thread(s)" in log
    probs = _ask(auto.grpc_url, "auto_threads", 32)
    assert probs.shape[0] == 3 and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_gpu_instances_without_a_usable_gpu_serve_on_the_cpu_and_say_why(served):
    import onnxruntime as ort
    import torch

    _, gpu = served
    log = gpu.log_tail(400)
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        assert "encoder_dinov3_tiny_0_0: ONNX Runtime on CUDAExecutionProvider" in log
    else:
        for instance in ("encoder_dinov3_tiny_0_0", "encoder_dinov3_tiny_0_1"):  # --instances 2, both loaded
            assert f"{instance}: instance kind gpu requested, running on the CPU instead:" in log
    probs = _ask(gpu.grpc_url, "on_gpu", 32)
    assert probs.shape[0] == 3 and np.allclose(probs.sum(1), 1, atol=1e-5)
