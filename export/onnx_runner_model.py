"""Triton python-backend model that runs an ONNX file with ONNX Runtime.

The tritonserver inside the nvidia-pytriton wheel carries only the python backend, so the local
repository serves each ONNX graph through this file; the official containers run the same ONNX file
with the native onnxruntime backend. Requests queued together by dynamic batching are concatenated
into one ONNX Runtime call and split again, as the native backend does.

This file is copied verbatim into each version directory as ``model.py``; it may import only what
the stub's interpreter has (numpy, onnxruntime, triton_python_backend_utils).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        if params.get("graph_optimization_level") == "extended":  # fp16 graphs (see onnx_export.PRECISION_ORT_LEVEL)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        onnx_file = params.get("onnx_file", "model.onnx")
        self.session = ort.InferenceSession(
            os.path.join(version_dir, onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        # A float input holding NaN or Inf would come back as NaN probabilities with no error, so each such
        # request is refused here, at the boundary, naming the input; the others in the batch still run.
        responses = [None] * len(requests)
        feeds = {name: [] for name in self.inputs}
        sizes, kept = [], []
        for i, request in enumerate(requests):
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            problem = _non_finite(arrays)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(
                    f"{problem}; send finite numbers (an embedding from the encoder is "
                    "L2-normalised, so every value lies in [-1, 1])"))
                continue
            for name, array in arrays.items():
                feeds[name].append(array)
            sizes.append(arrays[self.inputs[0]].shape[0])
            kept.append(i)
        if kept:
            batch = {name: np.concatenate(parts) for name, parts in feeds.items()}
            results = self.session.run(self.outputs, batch)
            start = 0
            for i, size in zip(kept, sizes):
                tensors = [pb_utils.Tensor(name, r[start:start + size]) for name, r in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def finalize(self):
        self.session = None


def _non_finite(arrays):
    """'input X holds N non-finite values (first at row R)' for the first float input with NaN/Inf, else ''."""
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            return f"input {name!r} holds {int(bad.sum())} NaN or infinite value(s) (first in row {row})"
    return ""


def _invalid_argument(message):
    """A TritonError the client reads as INVALID_ARGUMENT (a bad request), where the stub knows that code."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
