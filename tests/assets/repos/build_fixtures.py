"""Regenerate the repository fixtures: `.venv/bin/python tests/assets/repos/build_fixtures.py`.

``valid/`` is a complete production repository in miniature (a 4x4-pixel encoder of dim 3, a
2-class head and their ensemble), written through headserve's own config renderer; every other
directory is ``valid/`` with one defect that ``headserve repo validate`` must report. The ONNX graphs
are a few hundred bytes, built with onnx.helper so the fixtures need no torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from headserve.export.fingerprint_file import fingerprint_bytes
from headserve.export.model_config import DataType, EnsembleStep, ModelDesc, Runtime, TensorSpec, render, to_text

HERE = Path(__file__).parent
SIZE, DIM, CLASSES = 4, 3, ["cat", "background"]
PREPROCESS = {"input_size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
              "resize": "squash", "interpolation": "bilinear"}
ENCODER = {"encoder_name": "toy:enc", "encoder_type": "dinov3", "encoder_model": "toy-encoder",
           "embedding_dim": str(DIM), "encoder_fingerprint": "sha256:" + "ab" * 32,
           "preprocess": json.dumps(PREPROCESS, sort_keys=True), "untrained": "true"}


def encoder_onnx() -> onnx.ModelProto:
    """uint8 (B, 4, 4, 3) -> mean colour (B, 3), emitted as `embedding` and `head_input`."""
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f", "axes"], ["embedding"], keepdims=0),
             helper.make_node("Identity", ["embedding"], ["head_input"])]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", DIM]) for n in ("embedding", "head_input")],
        [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def head_onnx(input_name: str = "embedding") -> onnx.ModelProto:
    """(B, 3) -> logits, probs over 2 classes."""
    w = numpy_helper.from_array(np.arange(DIM * 2, dtype=np.float32).reshape(DIM, 2) / 10, "w")
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", DIM])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("logits", "probs")], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def descs(head_params: dict[str, str]) -> dict[str, ModelDesc]:
    probs = (TensorSpec("logits", DataType.TYPE_FP32, (2,)), TensorSpec("probs", DataType.TYPE_FP32, (2,), "labels.txt"))
    return {
        "encoder_toy": ModelDesc("encoder_toy", (TensorSpec("pixels", DataType.TYPE_UINT8, (SIZE, SIZE, 3)),),
                                 tuple(TensorSpec(n, DataType.TYPE_FP32, (DIM,)) for n in ("embedding", "head_input")),
                                 max_batch_size=8, parameters=ENCODER),
        "toy_head": ModelDesc("toy_head", (TensorSpec("embedding", DataType.TYPE_FP32, (DIM,)),), probs,
                              max_batch_size=8),
        "toy": ModelDesc("toy", (TensorSpec("pixels", DataType.TYPE_UINT8, (SIZE, SIZE, 3)),),
                         probs + (TensorSpec("embedding", DataType.TYPE_FP32, (DIM,)),), max_batch_size=8,
                         steps=(EnsembleStep("encoder_toy", {"pixels": "pixels"},
                                             {"embedding": "embedding", "head_input": "head_input"}),
                                EnsembleStep("toy_head", {"embedding": "head_input"},
                                             {"logits": "logits", "probs": "probs"})),
                         parameters=head_params),
    }


def write_valid(root: Path) -> None:
    head_params = {k: ENCODER[k] for k in ("encoder_type", "encoder_model", "embedding_dim", "encoder_fingerprint")}
    head_params["classes"] = json.dumps(CLASSES)
    for name, desc in descs(head_params).items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(to_text(render(desc, Runtime.PRODUCTION)))
    onnx.save(encoder_onnx(), root / "encoder_toy" / "1" / "model.onnx")
    (root / "encoder_toy" / "1" / "fingerprint.json").write_bytes(fingerprint_bytes(ENCODER))
    onnx.save(head_onnx(), root / "toy_head" / "1" / "model.onnx")
    for name in ("toy_head", "toy"):
        (root / name / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "toy" / "1" / ".keep").write_text("")  # git keeps no empty directory; Triton ignores dot files


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def defects() -> dict[str, Callable[[Path], object]]:
    return {
        # The exporter leaked a generated name into the graph; the config says `embedding`.
        "wrong_tensor_name": lambda r: onnx.save(head_onnx("input.1"), r / "toy_head" / "1" / "model.onnx"),
        "wrong_dims": lambda r: edit(r / "toy_head" / "config.pbtxt", "dims: 3", "dims: 5"),
        # The head step reads a tensor that no step produces.
        "dangling_ensemble_map": lambda r: edit(r / "toy" / "config.pbtxt", 'key: "embedding"\n      value: "head_input"',
                                                'key: "embedding"\n      value: "features"'),
        "label_count_mismatch": lambda r: (r / "toy" / "labels.txt").write_text("cat\n"),
        "mismatched_encoder": lambda r: edit(r / "toy" / "config.pbtxt", "ab" * 32, "cd" * 32),
        "unparsable_config": lambda r: edit(r / "toy_head" / "config.pbtxt", "max_batch_size", "max_batch"),
    }


def main() -> None:
    cases = {"valid": lambda r: None, **defects()}
    for case, apply in cases.items():
        root = HERE / case
        shutil.rmtree(root, ignore_errors=True)
        write_valid(root)
        apply(root)
        print(root)


if __name__ == "__main__":
    main()
