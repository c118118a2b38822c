"""Triton python-backend model that runs an ONNX file with ONNX Runtime.

The tritonserver inside the nvidia-pytriton wheel carries only the python backend, so the local
repository serves each ONNX graph through this file; the official containers run the same ONNX file
with the native onnxruntime backend. Requests queued together by dynamic batching are concatenated
into one ONNX Runtime call and split again, as the native backend does. A model without batching
(``max_batch_size`` 0: the region encoder, whose one image carries K boxes) runs each request alone and
answers its outputs whole, whatever their first dimension.

Threads: ``intra_op_threads`` "0" gives the session this machine's cores (the process's CPU
affinity) shared among the model's instances, decided when the model loads, so one repository uses
whichever machine serves it. ``execution_provider`` "cuda" runs the session on the instance's GPU
with ONNX Runtime's CUDA provider; where that provider or a GPU is missing, the model still loads on
the CPU and the log says why.

``engine`` "openvino" runs the same ONNX file compiled by OpenVINO on the CPU instead, with the
compile properties the config carries as ``ov_<PROPERTY>`` parameters (export/engine.py's
``openvino_properties``: precision, streams, hint) and this instance's thread count; the log names
the precision OpenVINO compiled for.

This file is copied verbatim into each version directory as ``model.py``; it may import only what
the stub's interpreter has (numpy, onnxruntime, openvino, triton_python_backend_utils).
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
        options.intra_op_num_threads = _threads(params.get("intra_op_threads", "1"), config)
        options.inter_op_num_threads = 1
        if params.get("graph_optimization_level") == "extended":  # fp16 graphs (see onnx_export.PRECISION_ORT_LEVEL)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        if params.get("engine", "onnxruntime") == "openvino":
            self.session = _OpenVino(path, params, options.intra_op_num_threads)
            pb_utils.Logger.log_info(f"{args['model_instance_name']}: OpenVINO on the CPU, {self.session.describe()}")
        else:
            self.session = _session(path, options, params.get("execution_provider", "cpu"), args)
            pb_utils.Logger.log_info(
                f"{args['model_instance_name']}: ONNX Runtime on {self.session.get_providers()[0]}, "
                f"{options.intra_op_num_threads} intra-op thread(s)")
        self.name = args["model_name"]
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0  # rows of every tensor are the batch
        # A region encoder's frame side (its encoder_region parameter): boxes are checked against it, since a box
        # with no area in the frame pools nothing (NaN) and the graph cannot say which box that was.
        region = params.get("encoder_region")
        self.frame = int(json.loads(region)["resolution"]) if region else None

    def execute(self, requests):
        # A float input holding NaN or Inf would come back as NaN probabilities with no error, so each such
        # request is refused here, at the boundary, naming the input; the others in the batch still run.
        # Finite inputs can still overflow (an embedding of 3e38 gives infinite logits, then NaN probabilities),
        # so every answer is checked too: a request whose outputs are not finite is refused, never answered.
        responses = [None] * len(requests)
        feeds = {name: [] for name in self.inputs}
        sizes, kept, inputs = [], [], []
        for i, request in enumerate(requests):
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            problem = _non_finite(arrays)
            if problem:
                problem += ("; send finite numbers (an embedding from the encoder is L2-normalised, so every value "
                            "lies in [-1, 1])")
            elif self.frame:
                problem = _bad_box(arrays.get("boxes"), self.frame)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(problem))
                continue
            for name, array in arrays.items():
                feeds[name].append(array)
            sizes.append(arrays[self.inputs[0]].shape[0])
            kept.append(i)
            inputs.append(arrays)
        # Batched models: one session run for every request, split by rows. Without batching each request's
        # tensors are whole (an image and its K boxes), so each runs alone and keeps every output row.
        groups = [list(range(len(kept)))] if self.batched else [[j] for j in range(len(kept))]
        for group in groups:
            if not group:
                continue
            batch = {name: np.concatenate([feeds[name][j] for j in group]) for name in self.inputs}
            results = self.session.run(self.outputs, batch)
            start = 0
            for j in group:
                i, size, arrays = kept[j], sizes[j], inputs[j]
                parts = ({name: r[start:start + size] for name, r in zip(self.outputs, results)} if self.batched
                         else dict(zip(self.outputs, results)))
                start += size
                problem = _non_finite_outputs(self.name, parts, arrays)
                if problem:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=problem)
                    continue
                tensors = [pb_utils.Tensor(name, part) for name, part in parts.items()]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.session = None


def _threads(value, config):
    """Intra-op threads: the configured count, or (0) the cores this process may use / the instances."""
    threads = int(value)
    if threads > 0:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, cores // instances)


class _OpenVino:
    """An OpenVINO compiled model with ONNX Runtime's ``run(output_names, feeds)``."""

    def __init__(self, path, params, threads):
        import openvino as ov

        props = {k[len("ov_"):]: v for k, v in params.items() if k.startswith("ov_")}
        props["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(path), "CPU", props)
        self.request = self.compiled.create_infer_request()  # an instance runs one batch at a time

    def describe(self):
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an element type, e.g. bf16
        return (f"precision {getattr(precision, 'get_type_name', lambda: precision)()}, "
                f"{self.compiled.get_property('INFERENCE_NUM_THREADS')} thread(s), "
                f"{self.compiled.get_property('NUM_STREAMS')} stream(s)")

    def run(self, outputs, feeds):
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(result[self.compiled.output(name)], copy=True) for name in outputs]


def _session(path, options, provider, args):
    """A session on the CUDA provider when asked for and available, else on the CPU with the reason logged."""
    if provider == "cuda":
        why = None
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            why = "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        else:
            device = int(args.get("model_instance_device_id", "0") or 0)
            try:
                session = ort.InferenceSession(path, sess_options=options, providers=[
                    ("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"])
                if session.get_providers()[0] == "CUDAExecutionProvider":
                    return session
                why = "ONNX Runtime could not initialise CUDA (no GPU or driver visible to this process)"
            except Exception as exc:  # a CUDA library that does not load raises here
                why = f"the CUDA provider failed to start ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})"
        pb_utils.Logger.log_warn(f"{args['model_instance_name']}: instance kind gpu requested, running on the CPU "
                                 f"instead: {why}")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


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


def _bad_box(boxes, frame):
    """'box I (...) ...' for the first box with no area inside the frame (0, 0)-(frame, frame), else ''."""
    if boxes is None or boxes.size == 0:
        return ""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        return f"input 'boxes' has shape {list(boxes.shape)}; send (K, 4) rows of x1, y1, x2, y2"
    x1, y1 = np.clip(boxes[:, 0], 0, frame), np.clip(boxes[:, 1], 0, frame)
    x2, y2 = np.clip(boxes[:, 2], 0, frame), np.clip(boxes[:, 3], 0, frame)
    bad = np.flatnonzero((x2 <= x1) | (y2 <= y1))
    if not len(bad):
        return ""
    i = int(bad[0])
    return (f"input 'boxes' row {i} ({', '.join(f'{float(v):g}' for v in boxes[i])}) has no area inside the "
            f"{frame}x{frame} frame ({len(bad)} such box(es)); send x1 < x2 and y1 < y2 in pixels of the letterboxed "
            "frame, each overlapping it")


def _non_finite_outputs(model, outputs, inputs):
    """The error for a request whose finite inputs gave NaN or infinite outputs, else None.

    With float inputs (embeddings) the request carried values large enough to overflow the graph: a bad
    request, INVALID_ARGUMENT naming the largest one. With pixels only, no input can be to blame: the graph
    itself overflows (an fp16 export, say), an internal error.
    """
    bad_rows, names = set(), []
    for name, array in outputs.items():
        if array.dtype.kind != "f" or array.size == 0:  # no rows (an image without boxes): nothing to check
            continue
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if bad.any():
            names.append(name)
            bad_rows.update(int(r) for r in np.flatnonzero(bad))
    if not bad_rows:
        return None
    rows = sorted(bad_rows)
    where = (f"model {model!r} computed NaN or infinite {', '.join(map(repr, names))} for {len(rows)} row(s) of "
             f"this request (rows {', '.join(map(str, rows[:10]))}{', ...' if len(rows) > 10 else ''}) from finite "
             "inputs, so it is refused rather than answered")
    floats = {name: array for name, array in inputs.items() if array.dtype.kind == "f"}
    if floats:
        name, array = max(floats.items(), key=lambda item: float(np.abs(item[1]).max(initial=0.0)))
        flat = np.abs(array.reshape(len(array), -1))
        row = int(flat.max(axis=1).argmax())
        return _invalid_argument(f"{where}: input {name!r} reaches {float(flat[row].max()):.3g} in row {row}, "
                                 "which overflows the computation; send embeddings as the encoder makes them "
                                 "(L2-normalised, every value in [-1, 1])")
    return pb_utils.TritonError(f"{where}: the graph overflows on these inputs (an fp16 export?); re-export it "
                                "in fp32, and see the server log")


def _invalid_argument(message):
    """A TritonError the client reads as INVALID_ARGUMENT (a bad request), where the stub knows that code."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
