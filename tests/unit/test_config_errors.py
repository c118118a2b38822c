"""Every config refuses a bad value with ``ConfigError`` (or its package's subclass) naming the field and the
value; library messages never name a command-line flag, and the CLI spells the fields as its flags."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from headserve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("headserve", "train", "export", "client")  # the packages whose messages must not name flags


def _make(path: str, **kwargs: Any) -> Callable[[], object]:
    """A call of config class ``module:Class`` with ``kwargs``, imported when the case runs."""
    module, name = path.split(":")
    return lambda: getattr(importlib.import_module(module), name)(**kwargs)


def _spec(**kwargs: Any) -> Callable[[], object]:
    base = dict(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash",
                interpolation="bicubic")
    return _make("headserve.encoders:PreprocessSpec", **{**base, **kwargs})


def _identity() -> object:
    from headserve.contract import EncoderIdentity

    return EncoderIdentity("clip", "tiny", 8)


def _desc(**kwargs: Any) -> Callable[[], object]:
    def make() -> object:
        from headserve.export.model_config import DataType, ModelDesc, TensorSpec

        return ModelDesc("m", (TensorSpec("pixels", DataType.TYPE_UINT8, (8, 8, 3)),),
                         (TensorSpec("embedding", DataType.TYPE_FP32, (4,)),), **kwargs)
    return make


# (config, bad field, error type (module:Class), message pattern); one row per check a config makes.
CASES: list[tuple[str, Callable[[], object], str | None, str, str]] = [
    ("PreprocessSpec", _spec(resize="stretch"), "resize", "headserve.errors:ConfigError", r"resize rule 'stretch'"),
    ("PreprocessSpec", _spec(input_size=4), "input_size", "headserve.errors:ConfigError", "input_size 4 is too small"),
    ("PreprocessSpec", _spec(crop_offset="left"), "crop_offset", "headserve.errors:ConfigError", "crop_offset 'left'"),
    ("PreprocessSpec", _spec(resize_size=200, resize="shortest_side_center_crop"), "resize_size",
     "headserve.errors:ConfigError", "resize_size 200 is smaller than input_size 224"),
    ("EncoderFamily", _make("headserve.encoders:EncoderFamily", name="x", text_tower=False, resize="squash",
                            interpolation="bicubic", weights_field="checkpoint"), "weights_field",
     "headserve.errors:ConfigError", "family x: weights_field 'checkpoint'"),
    ("HeadConfig", _make("headserve.head:HeadConfig", in_dim=8, num_classes=3, activation="tanh"), "activation",
     "headserve.errors:ConfigError", "activation 'tanh'"),
    ("HeadConfig", _make("headserve.head:HeadConfig", in_dim=8, num_classes=1), "num_classes",
     "headserve.errors:ConfigError", "at least 2 classes"),
    ("EncoderIdentity", _make("headserve.contract:EncoderIdentity", encoder_type="clip", model="tiny",
                              embedding_dim=-1), "embedding_dim", "headserve.errors:ConfigError", "embedding_dim -1"),
    ("ServedHead", lambda: importlib.import_module("headserve.contract").ServedHead(
        name="h", classes=("a",), encoder=_identity()), "classes", "headserve.errors:ConfigError",
     "has 1 classes; a classifier needs at least 2"),
    ("TritonFlags", _make("headserve.triton_flags:TritonFlags", repository="r", model_control="sometimes"),
     "model_control", "headserve.errors:ConfigError", "model control mode 'sometimes'"),
    ("ServerConfig", _make("headserve.server:ServerConfig", repository=Path("r"), grpc_port=70000), "grpc_port",
     "headserve.errors:ConfigError", "grpc_port 70000"),
    ("SoakConfig", _make("headserve.app.soak:SoakConfig", clients=0), "clients", "headserve.errors:ConfigError",
     "clients 0"),
    ("DriftThresholds", _make("headserve.drift:DriftThresholds", ood_rate_ratio=0.5), "ood_rate_ratio",
     "headserve.errors:DriftConfigError", "ood_rate_ratio=0.5 must be at least 1"),
    ("FacesConfig", _make("headserve.train.faces:FacesConfig", image_size=16), "image_size",
     "headserve.errors:ConfigError", "image_size 16"),
    ("TrainConfig", _make("headserve.train.trainer:TrainConfig", label_smoothing=1.0), "label_smoothing",
     "headserve.errors:ConfigError", "label_smoothing 1.0 must be in"),
    ("TrainConfig", _make("headserve.train.trainer:TrainConfig", mixup=-0.1), "mixup",
     "headserve.errors:ConfigError", "mixup must not be negative"),
    ("EmbedConfig", _make("headserve.train.embed:EmbedConfig", batch_size=0), "batch_size",
     "headserve.errors:ConfigError", "batch_size 0"),
    ("EmbedConfig", _make("headserve.train.embed:EmbedConfig", engine="tensorflow"), "engine",
     "headserve.errors:ConfigError", "engine tensorflow"),
    ("LogregGrid", _make("headserve.train.selection:LogregGrid", c=(0.0,)), "c", "headserve.errors:ConfigError",
     r"C grid \(0.0,\)"),
    ("SelectionGrid", _make("headserve.train.selection:SelectionGrid", hidden=()), None,
     "headserve.errors:ConfigError", "has an empty axis"),
    ("SweepConfig", _make("headserve.train.sweep:SweepConfig", dataset=Path("d"), out=Path("o"), seeds=(1, 1)),
     "seeds", "headserve.errors:ConfigError", r"sweep seeds \(1, 1\)"),
    ("TrainRequest", lambda: importlib.import_module("headserve.train.pipeline").TrainRequest(
        dataset=Path("d"), encoder=importlib.import_module("headserve.encoders").get_encoder("clip:tiny"),
        out=Path("o"), ood_quantile=1.0), "ood_quantile", "headserve.errors:ConfigError", "ood_quantile 1.0"),
    ("EmbedRequest", lambda: importlib.import_module("headserve.train.store").EmbedRequest(
        dataset=Path("d"), encoder=importlib.import_module("headserve.encoders").get_encoder("clip:tiny"),
        out=Path("o"), shard_rows=0), "shard_rows", "headserve.errors:ConfigError", "shard_rows 0: a shard holds"),
    ("EmbedRequest", lambda: importlib.import_module("headserve.train.store").EmbedRequest(
        dataset=Path("d"), encoder=importlib.import_module("headserve.encoders").get_encoder("clip:tiny"),
        out=Path("o"), actors=-1), "actors", "headserve.errors:ConfigError", "actors -1: must be 0 or more"),
    ("RayClassifyConfig", _make("headserve.app.ray_classify:RayClassifyConfig", head="h", url="u", address="a.png"),
     "address", "headserve.errors:ConfigError", r"Ray address 'a\.png' is not auto, local, HOST:PORT"),
    ("RayClassifyConfig", _make("headserve.app.ray_classify:RayClassifyConfig", head="h", url="u", actors=-1),
     "actors", "headserve.client.errors:ClientConfigError", "actors=-1 must be at least 1"),
    ("RayClassifyConfig", _make("headserve.app.ray_classify:RayClassifyConfig", head="h", url="u", batch_size=0),
     "batch_size", "headserve.client.errors:ClientConfigError", "batch_size=0 must be at least 1"),
    ("RegionSpec", _make("headserve.regions:RegionSpec", resolution=450), "resolution",
     "headserve.errors:ConfigError", "resolution 450: must be a positive multiple of the encoder's patch size 16"),
    ("RegionSpec", _make("headserve.regions:RegionSpec", pooling="roi-max"), "pooling",
     "headserve.errors:ConfigError", "pooling 'roi-max': is not one of masked-mean"),
    ("TrainRequest", lambda: importlib.import_module("headserve.train.pipeline").TrainRequest(
        dataset=Path("d"), encoder=importlib.import_module("headserve.encoders").get_encoder("clip:tiny"),
        out=Path("o"), pooling="region"), "pooling", "headserve.errors:RegionModeError",
     r"`pooling` region is not available for clip:tiny \(family clip\)"),
    ("SweepConfig", _make("headserve.train.sweep:SweepConfig", dataset=Path("d"), out=Path("o"),
                          pooling=("crop", "crop")), "pooling", "headserve.errors:ConfigError",
     "pooling crop,crop: must name distinct modes"),
    ("TensorRTOptions", _make("headserve.export.model_config:TensorRTOptions", precision="INT8"), None,
     "headserve.errors:ConfigError", "TensorRT precision 'INT8'"),
    ("RuntimeOptions", _make("headserve.export.model_config:RuntimeOptions", instances=0), "instances",
     "headserve.export.errors:OptionsError", "instances 0"),
    ("ModelDesc", _desc(engine="tensorrt"), "engine", "headserve.export.errors:OptionsError",
     "engine 'tensorrt' is not one of"),
    ("EngineChoice", _make("headserve.export.engine:EngineChoice", engine="openvino", precision="fp16",
                           reason="asked for"), "precision", "headserve.export.errors:EngineChoiceError",
     "precision fp16"),
    ("ConnectionOptions", _make("headserve.client.options:ConnectionOptions", timeout_s=0.0), "timeout_s",
     "headserve.client.errors:ClientConfigError", "timeout_s=0.0 must be positive"),
    ("Thresholds", _make("headserve.client.decision:Thresholds", min_confidence=1.5), "min_confidence",
     "headserve.client.errors:ClientConfigError", "threshold min_confidence=1.5"),
    ("MetricsConfig", _make("headserve.client.metrics:MetricsConfig", max_class_labels=0), "max_class_labels",
     "headserve.client.errors:ClientConfigError", "max_class_labels=0"),
    ("DemoConfig", _make("headserve.app.demo:DemoConfig", images=0), "images", "headserve.errors:ConfigError",
     "images 0"),
]
# Dataclasses with a __post_init__ check that are records read from files or answers, not configs a caller
# sets: their own errors (ArtifactError, DriftError, DriftReportError, BadInputError) say which file or call.
RECORDS = {"HeadMeta", "Histogram", "DriftReference", "ServedWindow", "HeadSummary", "BatchPlan"}


def _load(path: str) -> type[Exception]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config, make, field, error, match", CASES,
                         ids=[f"{c[0]}-{c[2] or 'all'}" for c in CASES])
def test_a_config_refuses_a_bad_value_with_a_config_error_naming_the_field(config, make, field, error, match):
    with pytest.raises(_load(error), match=match) as raised:
        make()
    assert isinstance(raised.value, ConfigError)
    assert raised.value.setting == field


def _post_init_classes() -> set[str]:
    """Every class in the library and the application whose body defines ``__post_init__``."""
    found = set()
    for package in (*LIBRARY, "app"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                        isinstance(f, ast.FunctionDef) and f.name == "__post_init__" for f in node.body):
                    found.add(node.name)
    return found


def test_every_checked_config_is_in_the_table_so_a_new_one_cannot_raise_a_looser_error():
    checked = _post_init_classes()
    assert checked - RECORDS - {c[0] for c in CASES} == set(), "add a row to CASES (or RECORDS for a record)"
    assert {c[0] for c in CASES} | RECORDS <= checked  # no row for a class that no longer checks anything


FLAG = re.compile(r"(?<![\w`-])--[a-z][a-z-]+")
# Library messages that still name a flag, each in a module that another part of issue #24 moves or rewrites
# (results_file moves to the application; the export pipeline, discovery and artifact records are rewritten).
STILL_NAMING_FLAGS: set[str] = set()


def test_library_error_messages_name_config_fields_never_command_line_flags():
    offenders = []
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if where in STILL_NAMING_FLAGS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    offenders += [f"{where}:{c.lineno}: {FLAG.findall(c.value)}" for c in ast.walk(node.exc)
                                  if isinstance(c, ast.Constant) and isinstance(c.value, str) and FLAG.search(c.value)]
    assert offenders == []


def test_the_cli_spells_the_bad_setting_and_each_field_in_backticks_as_its_flag():
    from headserve.app.cli import error_line

    exc = ConfigError("`engine` openvino runs on the CPU; use `device` cpu or `engine` torch").about("engine")
    assert error_line(exc) == "--engine openvino runs on the CPU; use --device cpu or --engine torch"
    bad = ConfigError.bad_value("instances", 0, "a model needs at least one instance")
    assert error_line(bad) == "--instances 0: a model needs at least one instance"
    from headserve.train.embed import EmbedConfig

    with pytest.raises(ConfigError) as raised:  # the bad setting leads, another field is named in the problem
        EmbedConfig(device="cuda", engine="openvino")
    assert error_line(raised.value) == "--device cuda: --engine openvino runs on the CPU; use --device cpu or --engine torch"
    unmapped = ConfigError("`not_a_flag_field` 3 is wrong")  # a field no single flag sets keeps its name
    assert error_line(unmapped) == "`not_a_flag_field` 3 is wrong"
