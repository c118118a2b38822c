"""Recipe gating against a real Triton serving a CLIP head with a prompt model and an OOD score.

The repository is the shared one plus, built here with real ONNX export: a prompt-similarity model
honouring the prompt contract (``embedding`` FP32 [D] -> ``similarity`` FP32 [P]), an OOD scorer
(``embedding`` -> ``ood_score`` [1]), and an ensemble ``<clip head>_gate`` that publishes
``prompt_model``, ``prompt_classes`` and ``ood_threshold``. The DINOv3 head is served unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headserve.client import GateConfig, GateReason, HeadClient, Reason, Thresholds, decide, gate
from headserve.client.inputs import prepare
from headserve.client.prefilter import DINOV3_PREFILTER_MESSAGE

pytestmark = pytest.mark.integration


REPO_PROMPTS = ["a photo of the digit zero", "a photo of the digit one"]


class PromptSimilarity(nn.Module):
    """embedding (B, D) -> cosine similarity to each prompt embedding (B, P)."""

    def __init__(self, prompts: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("prompts", torch.from_numpy(prompts))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ self.prompts.T  # embeddings and prompts are unit vectors


class OodScorer(nn.Module):
    """embedding (B, D) -> 1 - best cosine similarity to a class prototype (B, 1)."""

    def __init__(self, protos: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("protos", torch.from_numpy(protos))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return 1.0 - (emb @ self.protos.T).max(dim=1, keepdim=True).values


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _add_model(repo: Path, name: str, module: nn.Module, dim: int, output: str, width: int,
               max_batch_size: int) -> None:
    from headserve.export.model_config import DataType, ModelDesc, Runtime, TensorSpec, render, to_text
    from headserve.export.onnx_export import GraphSpec, export_onnx
    from headserve.export.repository import RUNNER_SOURCE

    def make(b: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return (_unit(rng.standard_normal((b, dim))),)

    export_onnx(module, GraphSpec(name, ("embedding",), (output,), make), repo / name / "1" / "model.onnx")
    shutil.copyfile(RUNNER_SOURCE, repo / name / "1" / "model.py")
    desc = ModelDesc(name, (TensorSpec("embedding", DataType.TYPE_FP32, (dim,)),),
                     (TensorSpec(output, DataType.TYPE_FP32, (width,)),), max_batch_size=max_batch_size)
    (repo / name / "config.pbtxt").write_text(to_text(render(desc, Runtime.LOCAL)))


@dataclass
class GateServer:
    url: str
    server: object
    clip_head: str  # the gate ensemble: CLIP head + prompt model + OOD score
    dino_head: str
    prompt_model: str
    prompts: np.ndarray  # (P, D)
    prompt_classes: list[int]
    protos: np.ndarray  # (C_fg, D)
    ood_threshold: float
    crops: list[Image.Image]  # held-out CLIP crops
    ood_crop: Image.Image  # a crop crafted to be far from every class
    graph: object  # the CLIP encoder graph, for in-process references
    serving_head: nn.Module
    plain_head: str  # the CLIP head's own ensemble, with the repository's prompt model added by export
    embeddings: np.ndarray  # (N, D) in-process embeddings of ``crops``
    repo_prompt_text: np.ndarray  # (P, D) CLIP text embeddings of REPO_PROMPTS


@pytest.fixture(scope="module")
def gate_server(trained_heads, two_family_repo, tmp_path_factory):
    """The CLIP and DINOv3 heads these tests call, a gate ensemble and prompt models beside them, served."""
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.encoders import get_encoder
    from headserve.export.model_config import DataType, parse, to_text
    from headserve.head import load_head
    from headserve.server import LocalTriton, ServerConfig
    from headserve.train.dataset import load_crop
    from headserve.train.embed import embed_pixels

    head = trained_heads["clip:tiny"]
    meta, serving = load_head(head.artifact)
    spec = get_encoder("clip:tiny")
    graph = encoder_graph(load_encoder(spec))
    crops = [load_crop(o) for o in head.outcome.test_objects]
    emb = embed_pixels(graph, prepare(crops, _info_like(meta, spec)))
    labels = np.asarray(head.outcome.test_labels)
    fg = [c for c in range(len(meta.classes)) if c not in meta.background_indices]
    rng = np.random.default_rng(0)
    protos = _unit(np.stack([emb[labels == c].mean(0) if (labels == c).any() else rng.standard_normal(emb.shape[1])
                             for c in fg]))
    # One prompt per foreground class, plus a second (unrelated) prompt for the first class.
    prompts = np.concatenate([protos, _unit(rng.standard_normal((1, emb.shape[1])))])
    prompt_classes = fg + [fg[0]]

    # The OOD crop: the noise image farthest from every prototype; the threshold sits halfway
    # between it and the held-out crop nearest a prototype.
    candidates = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(8)]
    candidates += [Image.new("RGB", (40, 40), c) for c in ((255, 0, 255), (0, 0, 0), (255, 255, 255))]
    def score(e: np.ndarray) -> np.ndarray:
        return 1.0 - (e @ protos.T).max(axis=1)

    cand_scores = score(embed_pixels(graph, prepare(candidates, _info_like(meta, spec))))
    far, near = float(cand_scores.max()), float(score(emb).min())
    assert far > near, f"no crafted crop is farther from the prototypes ({far}) than a held-out crop ({near})"
    threshold = (far + near) / 2

    repo = tmp_path_factory.mktemp("gate") / "model_repository"
    shutil.copytree(two_family_repo, repo, symlinks=True)
    prompt_model, ood_model = f"{head.name}_gate_prompts", f"{head.name}_gate_ood"
    _add_model(repo, prompt_model, PromptSimilarity(prompts), emb.shape[1], "similarity", len(prompts),
               max_batch_size=16)  # smaller than the ensemble's: the client splits embeddings itself
    _add_model(repo, ood_model, OodScorer(protos), emb.shape[1], "ood_score", 1, config_max_batch(two_family_repo, head.name))
    config = parse((two_family_repo / head.name / "config.pbtxt").read_text())
    gate_name = f"{head.name}_gate"
    config.name = gate_name
    for step in config.ensemble_scheduling.step:  # the ood_score here comes from the scorer below
        for key in [k for k, v in step.output_map.items() if v == "ood_score"]:
            del step.output_map[key]
    kept = [o for o in config.output if o.name != "ood_score"]
    del config.output[:]
    config.output.extend(kept)
    config.output.add(name="ood_score", data_type=DataType.TYPE_FP32.value, dims=[1])
    step = config.ensemble_scheduling.step.add(model_name=ood_model, model_version=-1)
    step.input_map["embedding"] = "head_input"
    step.output_map["ood_score"] = "ood_score"
    config.parameters["prompt_model"].string_value = prompt_model
    config.parameters["prompt_classes"].string_value = json.dumps(prompt_classes)
    config.parameters["ood_threshold"].string_value = repr(threshold)
    (repo / gate_name / "1").mkdir(parents=True)
    shutil.copyfile(two_family_repo / head.name / "labels.txt", repo / gate_name / "labels.txt")
    (repo / gate_name / "config.pbtxt").write_text(to_text(config))

    # The repository's own prompt prefilter (export.prompts), baked from the CLIP text tower, on the plain head.
    from headserve.backbones import clip_text_embeddings
    from headserve.export.prompts import add_prompt_model

    add_prompt_model(repo, head.name, REPO_PROMPTS, [fg[0], fg[1]])
    text = clip_text_embeddings(load_encoder(spec), REPO_PROMPTS).numpy()

    ood_crop = candidates[int(cand_scores.argmax())]
    log = (repo.parent / "tritonserver.log").open("w")  # kept beside the repository for failures
    with log, LocalTriton(ServerConfig(repository=repo), log=log) as server:
        yield GateServer(server.grpc_url, server, gate_name, trained_heads["dinov3:tiny"].name, prompt_model,
                         prompts, prompt_classes, protos, threshold, crops, ood_crop, graph, serving,
                         head.name, emb, text)


def config_max_batch(repo: Path, model: str) -> int:
    """An ensemble step must accept the ensemble's max batch size."""
    from headserve.export.model_config import parse

    return int(parse((repo / model / "config.pbtxt").read_text()).max_batch_size)


def _info_like(meta, spec):
    from headserve.client.discovery import HeadInfo
    from headserve.contract import EncoderIdentity, ServedHead

    served = ServedHead(meta.name, tuple(meta.classes), EncoderIdentity.from_spec(spec), tuple(meta.background_indices))
    return HeadInfo(served, 64, ())


def test_head_discovers_prompt_model_and_ood_threshold(gate_server):
    with HeadClient(gate_server.url) as client:
        info = client.info(gate_server.clip_head)
    assert info.prompt_model == gate_server.prompt_model
    assert info.prompt_classes == tuple(gate_server.prompt_classes)
    assert info.has_ood_score and info.ood_threshold == pytest.approx(gate_server.ood_threshold)


def test_a_crop_far_from_every_class_is_rejected_as_out_of_distribution(gate_server):
    with HeadClient(gate_server.url) as client:
        preds = client.classify(gate_server.clip_head, [gate_server.ood_crop] + gate_server.crops,
                                thresholds=Thresholds(0.0, 0.0))
    assert preds[0].reason is Reason.OUT_OF_DISTRIBUTION
    assert preds[0].ood_score > gate_server.ood_threshold
    assert any(p.reason is not Reason.OUT_OF_DISTRIBUTION for p in preds[1:])


def test_served_gating_equals_gating_computed_in_process_from_the_same_head(gate_server):
    thresholds = Thresholds(min_confidence=0.4, min_margin=0.05)
    with HeadClient(gate_server.url) as client:
        info = client.info(gate_server.clip_head)
        target = info.classes[gate_server.prompt_classes[0]]
        # A prompt threshold at the median target similarity drops about half by prefilter.
        pixels = prepare(gate_server.crops, info)
        from headserve.train.embed import embed_pixels

        emb = embed_pixels(gate_server.graph, pixels)
        sims = emb @ gate_server.prompts.T
        target_sims = sims[:, [j for j, c in enumerate(gate_server.prompt_classes) if c == info.classes.index(target)]]
        config = GateConfig(target, thresholds, prompt_threshold=float(np.median(target_sims.max(1))))
        served = client.gate(gate_server.clip_head, gate_server.crops, config)
    with torch.no_grad():
        probs = gate_server.serving_head(torch.from_numpy(emb))[1].numpy()
    ood = (1.0 - (emb @ gate_server.protos.T).max(axis=1))[:, None]
    local = gate(info, decide(info, probs, thresholds, ood_scores=ood), config, sims)
    assert [(r.kept, r.reason) for r in served] == [(r.kept, r.reason) for r in local]
    np.testing.assert_allclose([r.prompt_similarity for r in served], [r.prompt_similarity for r in local], atol=1e-5)
    reasons = {r.reason for r in served}
    assert GateReason.PROMPT_MISMATCH in reasons and len(reasons) >= 2


def test_dinov3_gating_never_calls_the_prompt_model_and_logs_once(gate_server, caplog, server_counts):
    counts = server_counts(gate_server.url)
    with caplog.at_level(logging.INFO, logger="headserve.client"), HeadClient(gate_server.url) as client:
        info = client.info(gate_server.dino_head)
        target = next(c for i, c in enumerate(info.classes) if i not in info.background_indices)
        first = client.gate(gate_server.dino_head, gate_server.crops, GateConfig(target))
        client.gate(gate_server.dino_head, gate_server.crops[:3], GateConfig(target))
        estimate = client.estimate(gate_server.dino_head, 10_000, repeats=2)
    grown = counts.grown(gate_server.dino_head, len(gate_server.crops) + 1)
    dino_models = {gate_server.dino_head, f"{gate_server.dino_head}_head", "encoder_dinov3_tiny"}
    untouched = {m: inferences for m, (_, inferences) in grown.items() if m not in dino_models}
    assert gate_server.prompt_model in untouched and f"{gate_server.plain_head}_prompts" in untouched
    assert set(untouched.values()) == {0}, untouched  # no prompt model, nor any other model, was called
    assert grown[gate_server.dino_head][1] > len(gate_server.crops)
    assert all(r.prompt_similarity is None for r in first)
    assert [r.getMessage() for r in caplog.records].count(DINOV3_PREFILTER_MESSAGE) == 1
    assert estimate.prefilter_s is None and estimate.per_candidate_with_prefilter_s is None
    assert estimate.to_json()["without_prefilter"]["s_total"] > 0


def test_clip_gating_calls_the_prompt_model_and_its_estimate_includes_the_prefilter(gate_server, server_counts):
    counts = server_counts(gate_server.url)
    with HeadClient(gate_server.url) as client:
        info = client.info(gate_server.clip_head)
        target = info.classes[gate_server.prompt_classes[0]]
        client.gate(gate_server.clip_head, gate_server.crops, GateConfig(target, prompt_threshold=-1.0))
        estimate = client.estimate(gate_server.clip_head, 10_000, repeats=2)
    prompt = gate_server.prompt_model
    assert counts.grown(prompt, len(gate_server.crops))[prompt][1] >= len(gate_server.crops)
    assert estimate.prefilter_s is not None and estimate.prefilter_s > 0
    assert estimate.per_candidate_with_prefilter_s > estimate.per_candidate_without_prefilter_s


def test_asyncio_gating_equals_sync_gating_including_the_prefilter(gate_server):
    import asyncio

    from headserve.client import AsyncHeadClient, ConnectionOptions

    with HeadClient(gate_server.url) as client:
        info = client.info(gate_server.clip_head)
        config = GateConfig(info.classes[gate_server.prompt_classes[0]], Thresholds(0.3, 0.05), prompt_threshold=0.5)
        want = client.gate(gate_server.clip_head, gate_server.crops * 2, config)

    async def run():
        async with AsyncHeadClient(gate_server.url, ConnectionOptions(max_in_flight=2)) as c:
            return (await c.gate(gate_server.clip_head, gate_server.crops * 2, config),
                    await c.estimate(gate_server.clip_head, 10_000, repeats=2),
                    await c.estimate(gate_server.dino_head, 10_000, repeats=2))

    got, clip_estimate, dino_estimate = asyncio.run(run())
    assert [(r.kept, r.reason) for r in got] == [(r.kept, r.reason) for r in want]
    # the asyncio estimate measures the same terms: the prefilter for CLIP, none for DINOv3
    assert clip_estimate.prefilter_s is not None and clip_estimate.prefilter_s > 0 and clip_estimate.head_s > 0
    assert dino_estimate.prefilter_s is None and dino_estimate.per_candidate_without_prefilter_s > 0
    np.testing.assert_allclose([r.prompt_similarity for r in got], [r.prompt_similarity for r in want], atol=1e-6)


def test_the_repository_prompt_model_drives_the_clip_prefilter(gate_server, server_counts):
    counts = server_counts(gate_server.url)
    with HeadClient(gate_server.url) as client:
        info = client.info(gate_server.plain_head)
        target = info.classes[info.prompt_classes[0]]
        want = (gate_server.embeddings @ gate_server.repo_prompt_text.T)[:, 0]  # the target's only prompt
        config = GateConfig(target, Thresholds(0.0, 0.0), prompt_threshold=float(np.median(want)))
        results = client.gate(gate_server.plain_head, gate_server.crops, config)
    assert info.prompt_model == f"{gate_server.plain_head}_prompts"
    assert counts.grown(info.prompt_model, len(gate_server.crops))[info.prompt_model][1] == len(gate_server.crops)
    np.testing.assert_allclose([r.prompt_similarity for r in results], want, atol=1e-5)
    dropped = [r.prompt_similarity < config.prompt_threshold for r in results]
    assert [r.reason is GateReason.PROMPT_MISMATCH for r in results] == dropped and any(dropped)
