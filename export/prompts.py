"""The CLIP prompt prefilter: prompt embeddings computed at export and baked into a similarity model.

The client asks a CLIP head's prompt model how close each crop's embedding is to text prompts ("a photo
of a cat") before trusting the head, which catches crops the head was never trained to refuse. Prompt
text is embedded once here with the CLIP text tower, so serving needs no tokenizer and no text tower:
``<head>_prompts`` maps ``embedding`` FP32 [D] to ``similarity`` FP32 [P] (cosine, both sides L2-normalised).
The head's ensemble publishes ``prompt_model`` and ``prompt_classes`` (class index of each prompt).
DINOv3 and DINOv2 heads have no text tower and never get one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from headserve.backbones import clip_text_embeddings, encoder_graph, fingerprint, load_encoder
from headserve.contract import EMBEDDING, PROMPT_OUTPUT, prompt_model_name
from headserve.encoders import FAMILIES, get_encoder, has_text_tower
from headserve.errors import EncoderMismatchError, RepositoryError
from headserve.export.model_config import DataType, ModelDesc, ProductionOptions, Runtime, TensorSpec
from headserve.export.onnx_export import GraphSpec, export_onnx
from headserve.export.repository import WrittenModel, publish_version, read_served_head, rewrite_head_ensemble
from headserve.fsutil import staging_dir

# prompt_model_name is re-exported from headserve.contract.
__all__ = ["PROMPT_FAMILIES", "prompt_model_name", "parse_prompt",
           "PromptSimilarity", "add_prompt_model"]
# Encoder types with a text tower, derived from the family registry (headserve.encoders.FAMILIES).
PROMPT_FAMILIES: tuple[str, ...] = tuple(name for name, family in FAMILIES.items() if family.text_tower)


def parse_prompt(item: str, classes: Sequence[str], origin: str = "--prompt") -> tuple[int, str]:
    """``CLASS:TEXT`` -> (class index, prompt text), for class names that may themselves hold ':'.

    The class is the longest class name that the item starts with, followed by a colon; so a head with
    classes ``"a"`` and ``"a:b"`` reads ``"a:b:a photo"`` as class ``"a:b"`` and ``"a:a:b photo"`` as class
    ``"a"``. Splitting at the first colon would make a class named ``"sign:stop"`` impossible to prompt.
    """
    matches = [i for i, name in enumerate(classes)
               if item.startswith(f"{name}:") and item[len(name) + 1:].strip()]
    if not matches:
        raise RepositoryError(f"{origin} {item!r} must be CLASS:TEXT with CLASS one of {list(classes)} "
                              "and a non-empty prompt text after the colon")
    index = max(matches, key=lambda i: len(classes[i]))
    return index, item[len(classes[index]) + 1:].strip()


class PromptSimilarity(nn.Module):
    """Cosine similarity of image embeddings to baked prompt embeddings."""

    def __init__(self, text: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("text", text.float())  # (P, D), L2-normalised

    def forward(self, emb: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, P)
        return emb @ self.text.T


def add_prompt_model(repo: str | Path, head: str, prompts: Sequence[str], prompt_classes: Sequence[int],
                     runtime: Runtime | str = Runtime.LOCAL, encoder_weights: str | None = None,
                     options: ProductionOptions | None = None) -> WrittenModel:
    """Export ``<head>_prompts`` for a CLIP head already in ``repo`` and publish it on the head's ensemble."""
    repo, runtime = Path(repo), Runtime(runtime)
    served, wiring = read_served_head(repo, head, "its prompts")
    if not has_text_tower(served.encoder_type):
        raise RepositoryError(f"head {head!r} runs on a {served.encoder_type} encoder, which has no text tower; "
                              "the prompt prefilter exists for CLIP heads only")
    classes = served.classes
    if not prompts or len(prompts) != len(prompt_classes):
        raise RepositoryError(f"{len(prompts)} prompts and {len(prompt_classes)} prompt classes: give one class "
                              "index per prompt, and at least one prompt")
    bad = [c for c in prompt_classes if not 0 <= c < len(classes)]
    if bad:
        raise RepositoryError(f"prompt classes {bad} are outside 0..{len(classes) - 1} of head {head!r} "
                              f"({list(classes)})")
    spec = get_encoder(served.encoder.name or "")
    loaded = load_encoder(spec.with_weights(encoder_weights) if encoder_weights else spec)
    fp = fingerprint(encoder_graph(loaded), loaded.spec.preprocess)
    if served.encoder.fingerprint and served.encoder.fingerprint != fp:
        raise EncoderMismatchError(f"head {head!r} was trained on encoder fingerprint {served.encoder.fingerprint}, "
                                   f"but {spec.name} loaded here has {fp}; give the weights the head was trained "
                                   "on (encoder_weights)").about("encoder_weights")
    module = PromptSimilarity(clip_text_embeddings(loaded, list(prompts))).eval()
    dim = served.embedding_dim

    def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        x = rng.standard_normal((batch, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True),)

    name = prompt_model_name(head)
    model_dir = repo / name
    tmp = staging_dir(model_dir / "export")
    try:
        diffs = export_onnx(module, GraphSpec(name, (EMBEDDING,), (PROMPT_OUTPUT,), inputs), tmp / "model.onnx")
        desc = ModelDesc(name, (TensorSpec(EMBEDDING, DataType.TYPE_FP32, (dim,)),),
                         (TensorSpec(PROMPT_OUTPUT, DataType.TYPE_FP32, (len(prompts),)),),
                         max_batch_size=wiring.max_batch_size,
                         parameters={"prompts": json.dumps(list(prompts)), "prompt_encoder_fingerprint": fp},
                         light=True)
        version, path = publish_version(model_dir, desc, runtime, {"model.onnx": tmp / "model.onnx"}, options=options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rewrite_head_ensemble(repo, replace(served, prompt_model=name, prompt_classes=tuple(int(c) for c in prompt_classes)),
                          wiring)
    return WrittenModel(name, version, path, diffs)
