"""Triton python-backend model: encoded image bytes (JPEG, PNG, ...) -> the encoder's uint8 pixels.

The first step of a head's ``<head>_encoded`` ensemble. It runs headserve's own preprocessing code
(``headserve.preprocess``: decode, RGB conversion, resize rule, interpolation), copied into the version
directory at export beside this file, so the server resizes exactly as training and the client did,
whatever headserve version (if any) the serving container has installed.

This file is copied verbatim into each version directory as ``model.py``.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, version_dir)  # the vendored headserve preprocessing wins over any installed one
        sys.dont_write_bytecode = True  # serving never writes into the repository (export precompiled them)
        try:
            import PIL  # noqa: F401  (decoding needs it; the official Triton image does not ship it)
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"{args['model_name']}: the encoded-image decoder needs Pillow in the Triton container's "
                f"Python ({exc}). Serve with the image built from deploy/container/Dockerfile (the official "
                "tritonserver image plus Pillow), or send pixels to the head's own ensemble instead") from None
        from headserve.contract import IMAGE, PIXELS
        from headserve.encoders import PreprocessSpec
        from headserve.errors import ImageDecodeError
        from headserve.preprocess import DEFAULT_MAX_PIXELS, load_image, resize_for_encoder

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.spec = PreprocessSpec.from_json(params["preprocess"])
        self.input_name, self.output_name = IMAGE, PIXELS
        # Decoded pixels allowed per image: a small PNG can decode to gigabytes. A "max_pixels" config
        # parameter overrides headserve's default cap; the cap is stated in the error of a refused image.
        self.max_pixels = int(params.get("max_pixels") or DEFAULT_MAX_PIXELS)
        self.bad_input = ImageDecodeError  # the request's fault: answered as INVALID_ARGUMENT
        self.load_image = load_image
        self.resize = resize_for_encoder

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                pixels = np.stack([self.resize(self.load_image(bytes(data), origin=f"{i} of the request",
                                                               max_pixels=self.max_pixels),
                                               self.spec) for i, data in enumerate(images)])
            except Exception as exc:  # ImageDecodeError names the image; anything else is reported as is
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if isinstance(exc, self.bad_input) else None
                message = f"{exc.__class__.__name__}: {exc}"
                error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)]))
        return responses
