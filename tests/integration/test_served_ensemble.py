"""The walking skeleton end to end: heads served by the real tritonserver answer over gRPC with the
probabilities PyTorch computes in-process, for a CLIP head and for a DINOv3 head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from support.twins import TINY_ENCODERS
from support.waiting import CALL_TIMEOUT_S

from headserve.artifact import load_meta
from headserve.backbones import encoder_graph, load_encoder
from headserve.client import HeadClient
from headserve.contract import SCORE_OUTPUTS
from headserve.encoders import get_encoder
from headserve.export.model_config import parse
from headserve.head import load_head
from headserve.preprocess import prepare_batch
from headserve.train.dataset import load_crop

pytestmark = pytest.mark.integration


def _in_process_probs(artifact: Path, encoder: str, pixels: np.ndarray) -> np.ndarray:
    meta, head = load_head(artifact)
    graph = encoder_graph(load_encoder(get_encoder(encoder)))
    with torch.no_grad():
        outputs = head(graph(torch.from_numpy(pixels)))
    return outputs[SCORE_OUTPUTS.index("probs")].numpy()


@pytest.mark.parametrize("encoder", TINY_ENCODERS)
def test_served_probabilities_equal_in_process_pytorch_within_1e_5(encoder, trained_heads, triton):
    head = trained_heads[encoder]
    crops = [load_crop(o) for o in head.outcome.test_objects]
    assert len(crops) >= 10
    with HeadClient(triton.grpc_url) as client:
        served = client.probabilities(head.name, crops)
        info = client.info(head.name)
    expected = _in_process_probs(head.artifact, encoder, prepare_batch(crops, info.preprocess))
    assert served.shape == expected.shape == (len(crops), len(load_meta(head.artifact).classes))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("encoder", TINY_ENCODERS)
def test_client_discovers_classes_and_encoder_from_the_server(encoder, trained_heads, triton):
    head = trained_heads[encoder]
    meta = load_meta(head.artifact)
    with HeadClient(triton.grpc_url) as client:
        info = client.info(head.name)
        preds = client.classify(head.name, [load_crop(head.outcome.test_objects[0])], top_k=2)
    assert info.classes == tuple(meta.classes)
    assert info.encoder_type == encoder.split(":")[0]
    assert info.preprocess == meta.preprocess_spec
    assert preds[0].label in meta.classes and len(preds[0].top_k) == 2
    assert preds[0].top_k[0][1] >= preds[0].top_k[1][1]


def _infer_random_pixels(url: str, head, batch: int, seed: int, outputs=None):
    """A plain tritonclient request (no headserve client) with random uint8 pixels; returns (result, meta)."""
    import tritonclient.grpc as grpcclient

    meta = load_meta(head.artifact)
    size = meta.preprocess_spec.input_size
    pixels = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.infer(head.name, [inp], outputs=outputs, client_timeout=CALL_TIMEOUT_S), meta
    finally:
        client.close()


def test_classification_extension_returns_labels_from_the_labels_file(trained_heads, triton):
    import tritonclient.grpc as grpcclient

    result, meta = _infer_random_pixels(triton.grpc_url, trained_heads["clip:tiny"], 2, seed=1,
                                        outputs=[grpcclient.InferRequestedOutput("probs", class_count=2)])
    top = result.as_numpy("probs")  # (2, 2) of b"score:index:label"
    labels = {entry.decode().split(":", 2)[2] for entry in top.ravel()}
    assert labels <= set(meta.classes) and labels


def test_every_generated_config_parses_with_tritons_schema(local_repo):
    configs = sorted(local_repo.glob("*/config.pbtxt"))
    assert len(configs) == 3 * len(TINY_ENCODERS)  # per family: an encoder, a head, an ensemble
    for path in configs:
        config = parse(path.read_text())
        assert config.name == path.parent.name


def test_every_exported_onnx_file_passes_the_checker_with_named_tensors(local_repo):
    files = sorted(local_repo.glob("*/[0-9]*/model.onnx"))
    assert len(files) == 2 * len(TINY_ENCODERS)  # per family: the encoder's graph and the head's
    for path in files:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        names = [t.name for t in (*model.graph.input, *model.graph.output)]
        assert set(names) <= {"pixels", "embedding", "head_input", "logits", "probs", "ood_score", "head_id"}, names


def test_ensemble_outputs_probabilities_logits_and_embedding(trained_heads, triton):
    result, meta = _infer_random_pixels(triton.grpc_url, trained_heads["dinov3:tiny"], 3, seed=2)
    assert result.as_numpy("probs").shape == (3, len(meta.classes))
    assert result.as_numpy("logits").shape == (3, len(meta.classes))
    emb = result.as_numpy("embedding")
    assert emb.shape == (3, meta.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
