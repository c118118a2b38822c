"""Acceptance: tiny twins of every encoder family, two heads on one encoder, one on each other, a multi-head
ensemble; the repository validates, the real tritonserver serves it, and every output equals in-process PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.twins import TINY_ENCODERS
from support.waiting import CALL_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATOL = 1e-5  # fp32 end to end
PROMPTS = ["a photo of the digit zero", "a photo of a texture"]
HEADS = {"cats": "clip:tiny", "dogs": "clip:tiny", "birds": "dinov3:tiny", "fish": "dinov2:tiny",
         "owls": "dinov3-timm:tiny", "bats": "vjepa2:tiny"}
ENCODED = ("cats", "birds", "fish", "owls", "bats")  # heads that also get the encoded-image ensemble


def test_the_acceptance_repository_holds_a_head_on_every_familys_twin():
    assert set(TINY_ENCODERS) <= set(HEADS.values()), "add a head on the new family's twin to HEADS and ENCODED"
    assert {HEADS[h] for h in ENCODED} == set(TINY_ENCODERS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from headserve.encoders import get_encoder
    from headserve.export.encoded_input import add_encoded_input
    from headserve.export.example import ExampleHead, write_example_head
    from headserve.export.multi_head import write_multi_head_ensemble
    from headserve.export.pipeline import export_head
    from headserve.export.prompts import add_prompt_model
    from headserve.server import LocalTriton, ServerConfig

    root = tmp_path_factory.mktemp("acceptance")
    repo = root / "repo"
    artifacts = {}
    for i, (head, encoder) in enumerate(HEADS.items()):
        artifacts[head] = write_example_head(get_encoder(encoder), ExampleHead(head, seed=i), root / head)
        export_head(artifacts[head], repo, "local")
    write_multi_head_ensemble(repo, ["cats", "dogs"], "local")
    add_prompt_model(repo, "cats", PROMPTS, [0, 3])
    for head in ENCODED:  # centre crop, squash, resize 32 then crop 28, bicubic crop, resize 36 then crop 32
        add_encoded_input(repo, head, "local")
    with LocalTriton(ServerConfig(repository=repo)) as server:
        yield repo, artifacts, server


def reference(artifact: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every ensemble output computed in-process by PyTorch from the same pixels."""
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.contract import SCORE_OUTPUTS
    from headserve.encoders import get_encoder
    from headserve.head import load_head

    meta, head = load_head(artifact)
    with torch.no_grad():
        emb = encoder_graph(load_encoder(get_encoder(meta.encoder.name)))(torch.from_numpy(pixels))
        outs = dict(zip(SCORE_OUTPUTS, (t.numpy() for t in head(emb))))
    return {**outs, "embedding": emb.numpy()}


def infer(url: str, model: str, pixels: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                              client_timeout=CALL_TIMEOUT_S)
        return {o: result.as_numpy(o) for o in outputs}


def pixels_for(encoder: str, batch: int = 3) -> np.ndarray:
    from headserve.encoders import get_encoder

    size = get_encoder(encoder).preprocess.input_size
    return np.random.default_rng(7).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_the_repository_of_every_encoder_family_validates(served):
    from headserve.export.validation import describe, validate_repository

    repo, _, _ = served
    problems = validate_repository(repo)
    assert problems == [], describe(problems)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(
        [*HEADS, *(f"{h}_head" for h in HEADS), "heads_clip_tiny", "cats_prompts", *(f"{h}_encoded" for h in ENCODED),
         *(f"{kind}_{family}_tiny" for kind in ("encoder", "decode")
           for family in ("clip", "dinov3", "dinov2", "dinov3-timm", "vjepa2"))])


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_served_output_equals_in_process_pytorch(served, head):
    _, artifacts, server = served
    pixels = pixels_for(HEADS[head])
    want = reference(artifacts[head], pixels)
    got = infer(server.grpc_url, head, pixels, sorted(want))
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert np.abs(got[name] - want[name]).max() <= ATOL, name


def test_the_multi_head_ensemble_answers_every_head_from_one_encoder_pass(served, server_counts):
    _, artifacts, server = served
    pixels = pixels_for("clip:tiny", batch=4)
    outputs = [f"{h}__{o}" for h in ("cats", "dogs") for o in ("logits", "probs", "ood_score")]
    counts = server_counts(server.grpc_url)
    got = infer(server.grpc_url, "heads_clip_tiny", pixels, outputs + ["embedding"])
    # one encoder pass for the batch, not one per head
    assert counts.grown("encoder_clip_tiny", len(pixels))["encoder_clip_tiny"] == (1, len(pixels))
    for head in ("cats", "dogs"):
        want = reference(artifacts[head], pixels)
        for o in ("logits", "probs", "ood_score"):
            assert np.abs(got[f"{head}__{o}"] - want[o]).max() <= ATOL, (head, o)
    assert np.abs(got["embedding"] - want["embedding"]).max() <= ATOL


def test_the_clip_prompt_model_serves_similarity_to_the_baked_prompts(served):
    import tritonclient.grpc as grpcclient

    from headserve.backbones import clip_text_embeddings, load_encoder
    from headserve.encoders import get_encoder

    _, artifacts, server = served
    emb = reference(artifacts["cats"], pixels_for("clip:tiny"))["embedding"]
    text = clip_text_embeddings(load_encoder(get_encoder("clip:tiny")), PROMPTS).numpy()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inp = grpcclient.InferInput("embedding", list(emb.shape), "FP32")
        inp.set_data_from_numpy(emb)
        similarity = client.infer("cats_prompts", [inp], client_timeout=CALL_TIMEOUT_S).as_numpy("similarity")
        params = client.get_model_config("cats", as_json=True)["config"]["parameters"]
    assert np.abs(similarity - emb @ text.T).max() <= ATOL
    assert params["prompt_model"]["string_value"] == "cats_prompts"
    assert params["prompt_classes"]["string_value"] == "[0, 3]"


def encoded_images() -> list[bytes]:
    """Non-square PNG and JPEG crops, so the resize rule (crop vs squash) matters."""
    import io

    from PIL import Image

    rng = np.random.default_rng(11)
    out = []
    for (w, h), fmt in (((57, 40), "PNG"), ((30, 71), "JPEG"), ((45, 45), "PNG")):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def infer_encoded(url: str, model: str, images: list[bytes], outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    data = np.array(images, dtype=object).reshape(-1, 1)
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("image", list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                              client_timeout=CALL_TIMEOUT_S)
        return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("head", ENCODED)
def test_the_encoded_image_variant_decodes_and_resizes_exactly_as_training_did(served, head):
    from headserve.artifact import load_meta
    from headserve.preprocess import prepare_batch

    _, artifacts, server = served
    images = encoded_images()
    pixels = prepare_batch(images, load_meta(artifacts[head]).preprocess_spec)  # the training/client path
    want = reference(artifacts[head], pixels)
    got = infer_encoded(server.grpc_url, f"{head}_encoded", images, ["probs", "embedding"])
    for name in ("probs", "embedding"):
        assert np.abs(got[name] - want[name]).max() <= ATOL, name


def test_bytes_that_are_not_an_image_fail_the_request_naming_the_image(served):
    from tritonclient.utils import InferenceServerException

    _, _, server = served
    with pytest.raises(InferenceServerException, match=r"ImageDecodeError: image 1 of the request does not decode"):
        infer_encoded(server.grpc_url, "cats_encoded", [encoded_images()[0], b"not an image"], ["probs"])


def test_a_decoder_without_pillow_fails_to_load_naming_the_image_to_run(served, tmp_path):
    import shutil

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from headserve.server import LocalTriton, ServerConfig

    repo, _, _ = served
    empty = tmp_path / "repo"
    empty.mkdir()
    with LocalTriton(ServerConfig(repository=empty, model_control="explicit")) as server:
        shutil.copytree(repo / "decode_clip_tiny", empty / "decode_clip_tiny")
        # Pillow is installed wherever these tests run, so its absence (as in the official Triton
        # image) is staged: a PIL package that fails to import, first on the decoder's sys.path.
        fake = empty / "decode_clip_tiny" / "1" / "PIL"
        fake.mkdir()
        (fake / "__init__.py").write_text('raise ImportError("No module named \'PIL\'")\n')
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with pytest.raises(InferenceServerException) as failed:
                client.load_model("decode_clip_tiny")
    message = str(failed.value)
    assert "decode_clip_tiny: the encoded-image decoder needs Pillow" in message
    assert "deploy/container/Dockerfile" in message
