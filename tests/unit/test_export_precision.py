"""fp16 encoders are kept only when they match fp32; large graphs keep their weights as ONNX external data."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from headserve.backbones import LoadedEncoder, encoder_graph, load_encoder
from headserve.encoders import get_encoder
from headserve.export.errors import Fp16ParityError
from headserve.export.model_config import Runtime, parse
from headserve.export.repository import add_encoder
from headserve.export.validation import validate_repository


class Overflowing(nn.Module):
    """A backbone whose activations exceed float16's range (65504), as deep ViTs' can; fine in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, 6)
        big = x.flatten(1)[:, :6] * 1e5  # (B, 6)
        return big * big / 1e5  # overflows to inf in fp16, then normalising gives NaN


def served_embedding(version_dir, pixels: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the version directory, at the optimisation level its config asks the runner for."""
    config = parse((version_dir.parent / "config.pbtxt").read_text())
    options = ort.SessionOptions()
    if config.parameters["graph_optimization_level"].string_value == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"pixels": pixels})[0]


@pytest.mark.parametrize("name", ["clip:tiny", "dinov3:tiny", "dinov3-timm:tiny"])
def test_an_fp16_encoder_within_tolerance_is_kept_and_still_emits_fp32(name, tmp_path):
    loaded = load_encoder(get_encoder(name))
    written = add_encoder(tmp_path, loaded, Runtime.LOCAL, precision="fp16")
    assert 0 < max(written.max_abs_diff.values()) <= 5e-3
    config = parse((written.path.parent / "config.pbtxt").read_text())
    assert config.parameters["precision"].string_value == "fp16"
    assert config.parameters["graph_optimization_level"].string_value == "extended"
    assert {o.name: o.data_type for o in config.output} == {"embedding": 11, "head_input": 11}  # TYPE_FP32
    size = loaded.spec.preprocess.input_size
    pixels = np.random.default_rng(3).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        want = encoder_graph(loaded)(torch.from_numpy(pixels)).numpy()
    got = served_embedding(written.path, pixels)
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 5e-3


def test_an_fp16_encoder_that_overflows_is_refused_and_nothing_is_written(tmp_path):
    spec = get_encoder("dinov3:tiny")
    loaded = LoadedEncoder(spec=spec, backbone=Overflowing(), full_model=Overflowing())
    with pytest.raises(Fp16ParityError, match=r"fp16 export of dinov3:tiny produces NaN or inf.*`precision` fp32"):
        add_encoder(tmp_path, loaded, Runtime.LOCAL, precision="fp16")
    assert not (tmp_path / "encoder_dinov3_tiny").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "encoder_dinov3_tiny").iterdir())
    add_encoder(tmp_path, loaded, Runtime.LOCAL, precision="fp32")  # the same encoder is exact in fp32


def test_a_vjepa2_encoder_is_refused_in_fp16_before_any_work_naming_why_and_the_fix(tmp_path):
    from headserve.errors import ConfigError

    loaded = load_encoder(get_encoder("vjepa2:tiny"))
    with pytest.raises(ConfigError, match=r"vjepa2:tiny cannot be exported with `precision` fp16: its 3D RoPE .*"
                                          r"Range operator has no float16\. Export it with `precision` fp32"):
        add_encoder(tmp_path, loaded, Runtime.LOCAL, precision="fp16")
    assert list(tmp_path.iterdir()) == []
    add_encoder(tmp_path, loaded, Runtime.LOCAL, precision="fp32")


def test_weights_over_the_threshold_are_written_as_external_data_in_the_version_directory(tmp_path):
    loaded = load_encoder(get_encoder("clip:tiny"))
    written = add_encoder(tmp_path, loaded, Runtime.LOCAL, external_data_bytes=0)
    files = sorted(p.name for p in written.path.iterdir())
    assert files == ["__pycache__", "fingerprint.json", "model.onnx", "model.onnx.data", "model.py"]  # bytecode: precompiled
    assert (written.path / "model.onnx").stat().st_size < (written.path / "model.onnx.data").stat().st_size
    pixels = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        want = encoder_graph(loaded)(torch.from_numpy(pixels)).numpy()
    assert np.abs(served_embedding(written.path, pixels) - want).max() <= 1e-5
    assert validate_repository(tmp_path) == []
    (written.path / "model.onnx.data").unlink()
    (problem,) = validate_repository(tmp_path)
    assert problem.path == written.path / "model.onnx.data" and "external data" in problem.message
    assert json.loads((written.path / "fingerprint.json").read_text())["encoder_name"] == "clip:tiny"
