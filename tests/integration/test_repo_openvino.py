"""An encoder served by OpenVINO in bf16: the local server answers exactly what the same compiled model answers
in-process, and the head on top decides as it does on those embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("openvino")
    from headserve.encoders import get_encoder
    from headserve.export.engine import cpu_capabilities
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.pipeline import export_head
    from headserve.server import LocalTriton, ServerConfig

    root = tmp_path_factory.mktemp("openvino")
    precision = "bf16" if "BF16" in cpu_capabilities() else "fp32"  # the CI machine's CPU decides which runs
    repo = root / "repo"
    lines: list[str] = []
    export_head(write_example_head(get_encoder("clip:tiny"), ExampleHead("ov_cats"), root / "a"), repo, "local",
                engine="openvino", precision=precision, log=lines.append)
    with LocalTriton(ServerConfig(repository=repo)) as server:
        yield server, repo, precision, lines


def _infer(url: str, model: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        result = client.infer(model, [inp], client_timeout=60)
        return {name: result.as_numpy(name) for name in ("embedding", "probs")}


def test_the_served_openvino_encoder_answers_what_the_same_compiled_model_answers_in_process(served):
    from headserve.encoders import get_encoder
    from headserve.export.engine import OpenVinoEncoder, sample_pixels

    server, repo, precision, lines = served
    version = repo / "encoder_clip_tiny" / "1"
    pixels, _ = sample_pixels(get_encoder("clip:tiny").preprocess, 8)
    got = _infer(server.grpc_url, "ov_cats", pixels)
    want = OpenVinoEncoder(version / "model.onnx", precision)(pixels)
    np.testing.assert_allclose(got["embedding"], want, rtol=0, atol=1e-5)
    assert f"encoder_clip_tiny_0_0: OpenVINO on the CPU, precision {'bf16' if precision == 'bf16' else 'f32'}" in \
        server.log_tail(400)
    record = json.loads((version / "fingerprint.json").read_text())
    assert record["engine"] == "openvino" and record["precision"] == precision
    assert record["engine_check"]["min_cosine"] >= 0.999 and record["engine_check"]["top1_agreement"] is not None
    assert any("engine openvino" in line and "min cosine" in line for line in lines)
