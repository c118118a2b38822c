"""The example head and the example repository: deterministic, untrained, on the tiny encoder twins.

The committed ``model_repository/`` configs, the repository tests and the benchmarks need heads
without running training; the example head is a seeded random MLP with the encoder's real metadata
(fingerprint included), so everything downstream of the artifact is the production path.
``write_example_repository`` writes the example repository whose configs are committed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from headserve.artifact import HeadMeta
from headserve.backbones import encoder_graph, fingerprint, load_encoder
from headserve.contract import EncoderIdentity
from headserve.encoders import EncoderSpec
from headserve.head import HeadConfig, MLPHead, ServingHead, save_head

EXAMPLE_CLASSES: tuple[str, ...] = ("digit_0", "digit_1", "digit_2", "background")


@dataclass(frozen=True)
class ExampleHead:
    """What the example artifact looks like."""

    name: str  # head (and ensemble) name
    seed: int = 0  # weights seed: another seed is another version of the "same" head
    hidden: tuple[int, ...] = (16,)  # MLP widths
    temperature: float = 1.5  # a calibration temperature other than 1, so it is visibly applied
    classes: tuple[str, ...] = EXAMPLE_CLASSES  # the last one is background


def write_example_head(spec: EncoderSpec, example: ExampleHead, out: str | Path) -> Path:
    """Save the example head for ``spec`` as an artifact directory at ``out``."""
    loaded = load_encoder(spec)
    fp = fingerprint(encoder_graph(loaded), loaded.spec.preprocess)
    config = HeadConfig(in_dim=spec.embedding_dim, num_classes=len(example.classes), hidden=example.hidden)
    torch.manual_seed(example.seed)
    module = ServingHead(MLPHead(config), temperature=example.temperature)
    meta = HeadMeta(
        name=example.name,
        encoder=replace(EncoderIdentity.from_spec(spec, fp), preprocess=loaded.spec.preprocess),
        classes=list(example.classes),
        background_indices=[len(example.classes) - 1],
        head_type=config.head_type,
        head_config=config.to_dict(),
        temperature=example.temperature,
        encoder_untrained=spec.is_tiny,
        extra={"example": f"untrained example head, seed {example.seed}"},
    )
    return save_head(out, meta, module)


# The example repository: two heads on one encoder (plus their multi-head ensemble and a prompt model),
# and one head on each other family (one of them with its encoded-image variant).
EXAMPLE_HEADS: dict[str, str] = {
    "digits_clip_tiny": "clip:tiny",
    "textures_clip_tiny": "clip:tiny",
    "digits_dinov3_tiny": "dinov3:tiny",
    "digits_dinov2_tiny": "dinov2:tiny",
}
EXAMPLE_PROMPTS: dict[str, int] = {"a photo of the digit zero": 0, "a photo of the digit one": 1,
                                   "a photo of the digit two": 2, "a photo of a plain texture": 3}


def write_example_repository(repo: str | Path, runtime: str = "production", options=None) -> list:
    """Write the example repository (weights included) into ``repo``; returns what was written."""
    from headserve.encoders import get_encoder
    from headserve.export.encoded_input import add_encoded_input
    from headserve.export.multi_head import write_multi_head_ensemble
    from headserve.export.pipeline import export_head
    from headserve.export.prompts import add_prompt_model

    written = []
    with tempfile.TemporaryDirectory(prefix="headserve-example-") as tmp:
        for seed, (head, encoder) in enumerate(EXAMPLE_HEADS.items()):
            artifact = write_example_head(get_encoder(encoder), ExampleHead(head, seed=seed), Path(tmp) / head)
            written += export_head(artifact, repo, runtime, options=options)
    written.append(write_multi_head_ensemble(repo, [h for h, e in EXAMPLE_HEADS.items() if e == "clip:tiny"],
                                             runtime))
    written.append(add_prompt_model(repo, "digits_clip_tiny", list(EXAMPLE_PROMPTS), list(EXAMPLE_PROMPTS.values()),
                                    runtime, options=options))
    written += add_encoded_input(repo, "digits_dinov3_tiny", runtime, options=options)
    return written
