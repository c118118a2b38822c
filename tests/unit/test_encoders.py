"""The encoder registry, the tiny twins, and what loading says when weights cannot be had."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from headserve.backbones import LOADERS, encoder_graph, fingerprint, load_encoder
from headserve.encoders import FAMILIES, REGISTRY, encoder_types, get_encoder, tiny_twin
from headserve.errors import UnknownEncoderError

# Every tiny twin in the registry: a family added with its twin is tested here without editing this list.
TINY_TWINS = sorted(name for name, spec in REGISTRY.items() if spec.is_tiny)


def test_every_encoder_family_has_a_tiny_twin():
    # declared families and the families of registry rows alike: a family with no rows yet still needs a twin
    families = sorted(set(FAMILIES) | set(encoder_types()) | set(LOADERS))
    missing = [t for t in families if tiny_twin(t) is None]
    assert missing == [], f"encoder families without a tiny random twin: {missing}"
    assert {"clip", "dinov3", "dinov2", "dinov3-timm", "vjepa2"} <= set(families)


def test_unknown_encoder_name_lists_the_registered_ones():
    with pytest.raises(UnknownEncoderError, match=r"unknown encoder 'clip:ViT-Z-99'.*dinov3:vitb16"):
        get_encoder("clip:ViT-Z-99")


def test_registry_names_carry_their_encoder_type():
    for name, spec in REGISTRY.items():
        assert name.split(":", 1)[0] == spec.encoder_type


@pytest.mark.parametrize("name", TINY_TWINS)
def test_tiny_twin_embeds_uint8_pixels_to_unit_vectors_of_its_registered_dim(name):
    spec = get_encoder(name)
    graph = encoder_graph(load_encoder(spec))
    size = spec.preprocess.input_size
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8))
    emb = graph(pixels)
    assert emb.shape == (3, spec.embedding_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not any(p.requires_grad for p in graph.parameters()), "encoders are frozen"


@pytest.mark.parametrize("name", TINY_TWINS)
def test_tiny_twin_embeds_different_images_differently_in_every_dimension(name):
    # A twin whose embedding hardly depends on the image trains heads that standardise float noise into
    # their answers; served and in-process probabilities then disagree.
    spec = get_encoder(name)
    size = spec.preprocess.input_size
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (16, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        emb = encoder_graph(load_encoder(spec))(pixels)
    assert emb.std(dim=0).min() > 1e-3, f"{name}: some embedding dimension is the same for every image"


@pytest.mark.parametrize("name", TINY_TWINS)
def test_tiny_twin_is_the_same_network_every_time_it_is_built(name):
    spec = get_encoder(name)
    first, second = (encoder_graph(load_encoder(spec)) for _ in range(2))
    assert fingerprint(first, spec.preprocess) == fingerprint(second, spec.preprocess)


def test_tiny_twins_are_labelled_untrained():
    assert "untrained" in get_encoder("clip:tiny").display_name
    assert "untrained" not in get_encoder("clip:ViT-B-32").display_name


def test_tiny_twin_refuses_external_weights():
    with pytest.raises(UnknownEncoderError, match="takes no weights"):
        get_encoder("dinov3:tiny").with_weights("/somewhere")


def _offline_cli(*args: str, home) -> subprocess.CompletedProcess:
    """Run the CLI with the hub switched off from the start (huggingface_hub reads it at import)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "headserve.app", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_unreachable_dinov3_weights_fail_with_the_model_and_the_fix(tmp_path):
    done = _offline_cli("export", "encoder", "dinov3:vitb16", "--repo", str(tmp_path / "repo"), home=tmp_path)
    assert done.returncode == 2
    assert "facebook/dinov3-vitb16-pretrain-lvd1689m" in done.stderr
    assert "hf auth login" in done.stderr and "--encoder-weights" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists(), "nothing is written when the encoder cannot load"


def test_missing_local_dinov3_directory_fails_with_the_path(tmp_path):
    missing = tmp_path / "no-such-weights"
    done = _offline_cli("export", "encoder", "dinov3:vits16", "--encoder-weights", str(missing),
                        "--repo", str(tmp_path / "repo"), home=tmp_path)
    assert done.returncode == 2
    assert "no-such-weights" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_clip_weights_fail_with_the_model_and_the_fix(tmp_path):
    done = _offline_cli("export", "encoder", "clip:ViT-B-32", "--repo", str(tmp_path / "repo"), home=tmp_path)
    assert done.returncode == 2
    assert re.search(r"ViT-B-32.*--encoder-weights FILE", done.stderr), done.stderr
    assert "Traceback" not in done.stderr
