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
        feeds = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                feeds[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(feeds[self.inputs[0]][-1].shape[0])
        batch = {name: np.concatenate(parts) for name, parts in feeds.items()}
        results = self.session.run(self.outputs, batch)
        responses = []
        start = 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, r[start:start + size]) for name, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None
