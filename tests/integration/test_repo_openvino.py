"""An encoder served by OpenVINO in bf16: the local server answers exactly what the same compiled model answers
in-process, and the head on top decides as it does on those embeddings."""

from __future__ import annotations

import json
import subprocess
import sys

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


def _headserve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "headserve.app", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_head_trained_on_the_openvino_engine_is_served_on_it_and_answers_as_trained(digits_dataset, tmp_path):
    import torch

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.export.engine import compile_graph, cpu_capabilities
    from headserve.head import load_head
    from headserve.server import LocalTriton, ServerConfig
    from headserve.train.dataset import load_crop, read_yolo
    from headserve.train.embed import pixels_of

    pytest.importorskip("openvino")
    precision = "bf16" if "BF16" in cpu_capabilities() else "fp32"
    out, repo = tmp_path / "head", tmp_path / "repo"
    _headserve("train", str(digits_dataset), "--out", str(out), "--epochs", "5", "--hidden", "32", "--encoder",
               "clip:tiny", "--engine", "openvino", "--precision", precision, "--cache", str(tmp_path / "cache"))
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["extra"]["embedding"]["engine"], meta["extra"]["embedding"]["precision"]) == ("openvino", precision)
    assert any(p.name.endswith(f"_openvino_{precision}") for p in (tmp_path / "cache").rglob("*") if p.is_dir())
    printed = _headserve("export", "head", str(out), "--repo", str(repo)).stdout  # auto: the head's own engine
    assert f"engine openvino {precision}: the engine the head's embeddings were computed with" in printed
    assert "top-1 agreement" in printed

    spec = get_encoder("clip:tiny")
    pixels = pixels_of([load_crop(o) for o in read_yolo(digits_dataset).objects[:12]], spec.preprocess)
    trained_engine = compile_graph(encoder_graph(load_encoder(spec)), spec.name, spec.preprocess.input_size,
                                   "openvino", precision)
    _, module = load_head(out)
    with torch.inference_mode():
        want = module(torch.from_numpy(trained_engine(pixels)))[1].numpy()
    with LocalTriton(ServerConfig(repository=repo)) as server:
        got = _infer(server.grpc_url, meta["name"], pixels)["probs"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # same engine and precision on both sides
