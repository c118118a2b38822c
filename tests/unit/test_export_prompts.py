"""The CLIP prompt prefilter model: baked text embeddings, published on the head's ensemble, CLIP only."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from headserve.backbones import clip_text_embeddings, load_encoder
from headserve.encoders import get_encoder
from headserve.errors import RepositoryError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import parse
from headserve.export.pipeline import export_head
from headserve.export.prompts import add_prompt_model
from headserve.export.validation import validate_repository

PROMPTS = ["a photo of the digit zero", "a photo of the digit one", "a photo of a texture"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("prompts")
    heads = {"cats": "clip:tiny", "birds": "dinov3:tiny", "owls": "dinov3-timm:tiny", "bats": "vjepa2:tiny"}
    for head, encoder in heads.items():
        export_head(write_example_head(get_encoder(encoder), ExampleHead(head), root / "art" / head), root / "repo",
                    "local")
    return root / "repo"


def ensemble_params(repo, head: str) -> dict[str, str]:
    return {k: v.string_value for k, v in parse((repo / head / "config.pbtxt").read_text()).parameters.items()}


def test_a_clip_head_publishes_its_prompt_model_and_the_class_of_each_prompt(repo):
    written = add_prompt_model(repo, "cats", PROMPTS, [0, 1, 3])
    params = ensemble_params(repo, "cats")
    assert params["prompt_model"] == written.name == "cats_prompts"
    assert json.loads(params["prompt_classes"]) == [0, 1, 3]
    assert validate_repository(repo) == []


def test_the_prompt_model_returns_cosine_similarity_to_the_clip_text_embeddings(repo):
    add_prompt_model(repo, "cats", PROMPTS, [0, 1, 3])
    text = clip_text_embeddings(load_encoder(get_encoder("clip:tiny")), PROMPTS).numpy()
    emb = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    version = max(int(p.name) for p in (repo / "cats_prompts").iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(repo / "cats_prompts" / str(version) / "model.onnx"))
    (similarity,) = session.run(["similarity"], {"embedding": emb})
    assert similarity.shape == (5, 3)
    assert np.abs(similarity - emb @ text.T).max() <= 1e-5


def test_re_exporting_the_head_keeps_its_prompt_model_published(repo, tmp_path):
    add_prompt_model(repo, "cats", PROMPTS, [0, 1, 3])
    export_head(write_example_head(get_encoder("clip:tiny"), ExampleHead("cats", seed=5), tmp_path / "cats"), repo,
                "local")
    assert ensemble_params(repo, "cats")["prompt_model"] == "cats_prompts"


@pytest.mark.parametrize("head, family", [("birds", "dinov3"), ("owls", "dinov3-timm"), ("bats", "vjepa2")])
def test_a_head_on_an_encoder_without_a_text_tower_never_gets_a_prompt_model(repo, head, family):
    with pytest.raises(RepositoryError, match=f"runs on a {family} encoder, which has no text tower"):
        add_prompt_model(repo, head, PROMPTS, [0, 1, 3])
    assert not (repo / f"{head}_prompts").exists()
    assert "prompt_model" not in ensemble_params(repo, head)


def test_a_prompt_class_outside_the_head_is_refused(repo):
    with pytest.raises(RepositoryError, match=r"prompt classes \[7\] are outside 0..3"):
        add_prompt_model(repo, "cats", PROMPTS, [0, 1, 7])
