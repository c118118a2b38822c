"""The encoder's engine: chosen from the CPU's capabilities, rendered for both runtimes through Triton's schema,
admitted only by the parity check, and matched against the engine a head was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headserve.backbones import load_encoder
from headserve.encoders import get_encoder
from headserve.export import engine as engine_module
from headserve.export.engine import (
    EngineChoice,
    check_parity,
    choose_engine,
    combined_min_cosine,
)
from headserve.export.errors import EngineChoiceError, EngineMismatchError, EngineParityError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import (
    InstanceKind,
    ModelDesc,
    OptionsError,
    Runtime,
    RuntimeOptions,
    parse,
    render,
    to_text,
)
from headserve.export.pipeline import export_head
from headserve.export.repository import add_encoder, encoder_desc
from headserve.export.validation import validate_repository

openvino = pytest.importorskip("openvino")

# Capability answers of two CPUs, as OpenVINO's OPTIMIZATION_CAPABILITIES gives them: simulated, since a test
# runs on one machine and must show what the other gets.
WITH_BF16 = frozenset({"FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"})
WITHOUT_BF16 = frozenset({"FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"})


def test_auto_picks_openvino_bf16_on_a_cpu_with_bf16_and_says_why():
    choice = choose_engine(capabilities=WITH_BF16)
    assert (choice.engine, choice.precision, choice.fallback) == ("openvino", "bf16", True)
    assert "this CPU computes bf16" in choice.reason and "BF16" in choice.reason


def test_a_cpu_without_bf16_gets_openvino_fp32_and_the_message_names_what_it_lacks():
    choice = choose_engine(capabilities=WITHOUT_BF16)
    assert (choice.engine, choice.precision, choice.fallback) == ("openvino", "fp32", False)
    assert "no bf16 arithmetic" in choice.reason and "AVX-512 BF16 or AMX" in choice.reason
    for engine in ("auto", "openvino"):  # OpenVINO would quietly compute f32 under a bf16 label
        with pytest.raises(EngineChoiceError, match=r"precision bf16: this CPU has no bf16 arithmetic.*`precision` fp32"):
            choose_engine(engine, "bf16", capabilities=WITHOUT_BF16)


def test_fp32_is_one_flag_away_and_gpus_keep_onnx_runtime():
    assert choose_engine(precision="fp32", capabilities=WITH_BF16).engine == "onnxruntime"
    assert choose_engine(gpu=True, capabilities=WITH_BF16).engine == "onnxruntime"
    assert choose_engine(capabilities=frozenset()).engine == "onnxruntime"  # OpenVINO not installed
    with pytest.raises(EngineChoiceError, match="engine openvino: runs on a CPU only"):
        choose_engine("openvino", gpu=True)
    with pytest.raises(EngineChoiceError, match="precision bf16: onnxruntime runs fp32, fp16"):
        choose_engine("onnxruntime", "bf16")


def _openvino_encoder_desc(precision: str) -> ModelDesc:
    spec = get_encoder("clip:tiny")
    return encoder_desc("encoder_clip_tiny", spec, {"engine": "openvino", "precision": precision},
                        engine="openvino", engine_precision=precision)


def test_the_production_config_renders_for_tritons_openvino_backend_and_parses_with_its_schema():
    options = RuntimeOptions(kind=InstanceKind.KIND_CPU, cpu_threads=8)
    config = parse(to_text(render(_openvino_encoder_desc("bf16"), Runtime.PRODUCTION, options)))
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx" and not config.platform
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert {k: params[k] for k in ("HINT_BF16", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")} == {
        "HINT_BF16": "YES", "INFERENCE_NUM_THREADS": "8", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    assert [g.kind for g in config.instance_group] == [InstanceKind.KIND_CPU.value]
    fp32 = parse(to_text(render(_openvino_encoder_desc("fp32"), Runtime.PRODUCTION)))
    assert "HINT_BF16" not in fp32.parameters and fp32.instance_group[0].kind == InstanceKind.KIND_CPU.value
    local = parse(to_text(render(_openvino_encoder_desc("bf16"), Runtime.LOCAL)))
    assert local.backend == "python" and local.parameters["engine"].string_value == "openvino"
    assert local.parameters["ov_INFERENCE_PRECISION_HINT"].string_value == "bf16"
    with pytest.raises(OptionsError, match="engine openvino runs on a CPU"):
        render(_openvino_encoder_desc("bf16"), Runtime.PRODUCTION, RuntimeOptions(kind=InstanceKind.KIND_GPU))


def test_a_production_openvino_repository_validates(tmp_path):
    art = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats"), tmp_path / "art")
    export_head(art, tmp_path / "repo", "production", engine="openvino", precision="fp32",
                options=RuntimeOptions(kind=InstanceKind.KIND_CPU))
    assert validate_repository(tmp_path / "repo") == []
    assert parse((tmp_path / "repo" / "encoder_clip_tiny" / "config.pbtxt").read_text()).backend == "openvino"


class _Broken:
    """An engine whose embeddings are rotated by noise: a fault no real engine gives on demand, so it is made here."""

    def __init__(self, real, scale: float) -> None:
        self.real, self.scale = real, scale

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        emb = self.real(pixels)
        noise = np.random.default_rng(0).standard_normal(emb.shape).astype(np.float32) * self.scale
        return emb + noise


def _break(monkeypatch: pytest.MonkeyPatch, precision: str, scale: float = 0.2) -> None:
    real = engine_module.ENGINE_RUNNERS["openvino"]

    def runner(path, p, threads=0):
        encoder = real(path, p, threads)
        return _Broken(encoder, scale) if p == precision else encoder

    monkeypatch.setitem(engine_module.ENGINE_RUNNERS, "openvino", runner)


def test_the_check_refuses_an_engine_whose_embeddings_drift_and_nothing_is_written(monkeypatch, tmp_path):
    _break(monkeypatch, "fp32")
    choice = EngineChoice("openvino", "fp32", "asked for")
    with pytest.raises(EngineParityError, match=r"encoder clip:tiny on openvino fp32: minimum cosine to the fp32 "
                                                r"PyTorch encoder 0\.\d+ on 32 crops .* below the fp32 minimum 0.99999"
                                                r".*`precision` fp32"):
        add_encoder(tmp_path, load_encoder(get_encoder("clip:tiny")), Runtime.LOCAL, choice=choice)
    assert not any(p.name.isdigit() for p in (tmp_path / "encoder_clip_tiny").glob("*"))


def test_an_automatic_bf16_that_fails_the_check_falls_back_to_fp32_and_says_so(monkeypatch, tmp_path):
    _break(monkeypatch, "bf16")
    lines: list[str] = []
    written = add_encoder(tmp_path, load_encoder(get_encoder("clip:tiny")), Runtime.LOCAL,
                          choice=choose_engine(capabilities=WITH_BF16), log=lines.append)
    record = json.loads((written.path / "fingerprint.json").read_text())
    assert (record["engine"], record["precision"]) == ("openvino", "fp32")
    assert record["engine_check"]["min_cosine"] >= 0.99999
    assert any("bf16 refused by the check" in line and "falling back to fp32" in line for line in lines)


def test_check_parity_counts_a_non_finite_embedding_as_a_failure():
    ref = np.eye(4, dtype=np.float32)
    got = ref.copy()
    got[2] = np.nan
    with pytest.raises(EngineParityError, match="minimum cosine to the fp32 PyTorch encoder -1.00000"):
        check_parity("x", ref, got, "openvino", "bf16", "test rows")


def test_the_bound_of_two_checks_adds_their_angles():
    assert combined_min_cosine(1.0, 0.9995) == pytest.approx(0.9995)
    assert combined_min_cosine(0.9999, 0.9999) < 0.9999
    assert combined_min_cosine(0.9999, 0.9999) == pytest.approx(np.cos(2 * np.arccos(0.9999)))


def _head_trained_on(tmp_path: Path, engine: str, precision: str, cosine: float) -> Path:
    art = write_example_head(get_encoder("clip:tiny"), ExampleHead("cats"), tmp_path / f"art-{engine}-{precision}")
    meta = json.loads((art / "meta.json").read_text())
    meta.setdefault("extra", {})["embedding"] = {"engine": engine, "precision": precision,
                                                 "min_cosine_to_fp32": cosine}
    (art / "meta.json").write_text(json.dumps(meta))
    return art


def test_export_head_serves_the_engine_the_head_was_trained_on(tmp_path):
    export_head(_head_trained_on(tmp_path, "openvino", "fp32", 1.0), tmp_path / "repo", "local")
    config = parse((tmp_path / "repo" / "encoder_clip_tiny" / "config.pbtxt").read_text())
    assert config.parameters["engine"].string_value == "openvino"
    assert config.parameters["precision"].string_value == "fp32"


def test_export_head_refuses_a_head_whose_training_engine_is_too_far_from_the_served_encoder(tmp_path):
    repo = tmp_path / "repo"
    export_head(_head_trained_on(tmp_path, "openvino", "bf16", 0.9999), repo, "local")  # within the check: served
    art = _head_trained_on(tmp_path, "torch", "bf16", 0.996)  # PyTorch bf16 autocast, far from OpenVINO's bf16
    with pytest.raises(EngineMismatchError, match=r"head 'cats' was trained on torch bf16 embeddings \(min cosine "
                                                  r"0.99600 to fp32\) but the encoder serves openvino bf16.*below 0.999"):
        export_head(art, repo, "local")


def test_an_fp16_choice_is_refused_for_a_family_that_cannot_export_fp16_whichever_way_it_is_passed(tmp_path):
    from headserve.errors import ConfigError

    loaded = load_encoder(get_encoder("vjepa2:tiny"))
    with pytest.raises(ConfigError, match=r"vjepa2:tiny cannot be exported with `precision` fp16"):
        add_encoder(tmp_path, loaded, Runtime.LOCAL, choice=choose_engine("onnxruntime", "fp16"))
