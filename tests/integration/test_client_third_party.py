"""Clients no one here wrote drive the same served heads: plain tritonclient gRPC and HTTP, and
pytriton's ModelClient. Each sends uint8 pixels prepared as the docs say and must get the
probabilities headserve's own client gets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.twins import TINY_ENCODERS
from support.waiting import CALL_TIMEOUT_S

from headserve.client import HeadClient
from headserve.encoders import PreprocessSpec
from headserve.preprocess import prepare_batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=TINY_ENCODERS)
def served(request, trained_heads, triton):
    """(head name, uint8 pixels, headserve client's probabilities) for one head."""
    from headserve.train.dataset import load_crop

    head = trained_heads[request.param]
    crops = [load_crop(o) for o in head.outcome.test_objects[:12]]
    with HeadClient(triton.grpc_url) as client:
        probs = client.probabilities(head.name, crops)
    return head.name, crops, probs


def _pixels_from_published_spec(config_parameters: dict, crops) -> np.ndarray:
    """What a foreign client does: read the preprocess parameter, resize with the shared function."""
    return prepare_batch(crops, PreprocessSpec.from_dict(json.loads(config_parameters["preprocess"])))


def test_plain_tritonclient_grpc_gets_the_same_probabilities(served, triton):
    import tritonclient.grpc as grpcclient

    name, crops, want = served
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        config = c.get_model_config(name, as_json=True)["config"]
        pixels = _pixels_from_published_spec({k: v["string_value"] for k, v in config["parameters"].items()}, crops)
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        got = c.infer(name, [inp], outputs=[grpcclient.InferRequestedOutput("probs")],
                      client_timeout=CALL_TIMEOUT_S).as_numpy("probs")
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_plain_tritonclient_http_gets_the_same_probabilities(served, triton):
    import tritonclient.http as httpclient

    name, crops, want = served
    c = httpclient.InferenceServerClient(triton.http_url, network_timeout=CALL_TIMEOUT_S)
    try:
        config = c.get_model_config(name)
        pixels = _pixels_from_published_spec({k: v["string_value"] for k, v in config["parameters"].items()}, crops)
        inp = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=True)
        got = c.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("probs", binary_data=True)])
        got = got.as_numpy("probs")
    finally:
        c.close()
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning:pytriton")  # pytriton notes gRPC has no timeout for metadata calls
def test_pytriton_model_client_gets_the_same_probabilities(served, triton):
    import tritonclient.grpc as grpcclient
    from pytriton.client import ModelClient

    name, crops, want = served
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        params = {k: v.string_value for k, v in c.get_model_config(name).config.parameters.items()}
    pixels = _pixels_from_published_spec(params, crops)
    with ModelClient(f"grpc://{triton.grpc_url}", name, init_timeout_s=60, inference_timeout_s=60) as client:
        out = client.infer_batch(pixels=pixels)
    assert {"probs", "logits", "embedding"} <= set(out)
    np.testing.assert_allclose(out["probs"], want, atol=1e-6)
