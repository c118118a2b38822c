"""Region heads served by the real tritonserver: one image and its boxes in, one answer per box out.

One repository (two region heads on the DINOv3 twin's region encoder, and their multi-head ensemble) is
exported and served once for the module; the in-process side is the region encoder's torch module
(``headserve.backbones.region_graph``) and the head's PyTorch module on the same letterboxed frame.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image
from support.waiting import CALL_TIMEOUT_S
from tritonclient.utils import InferenceServerException

from headserve.backbones import load_encoder, region_graph
from headserve.client import AsyncHeadClient, BadInputError, HeadClient, Thresholds, decide
from headserve.client.regions import region_inputs
from headserve.contract import (
    BOXES,
    EMBEDDING,
    MAX_BOXES_KEY,
    PROBS,
    REGION_PIXELS,
    SCORE_OUTPUTS,
    multi_head_output_name,
    region_encoder_model_name,
)
from headserve.encoders import get_encoder
from headserve.errors import EncoderMismatchError
from headserve.export.example import ExampleHead, write_example_head
from headserve.export.model_config import RuntimeOptions, TensorRTOptions, parse
from headserve.export.multi_head import write_multi_head_ensemble
from headserve.export.pipeline import export_head
from headserve.export.region_ensemble import MAX_BOXES, write_example_region_head
from headserve.export.validation import validate_repository
from headserve.head import load_head
from headserve.server import LocalTriton, ServerConfig

pytestmark = pytest.mark.integration
ENCODER = "dinov3:tiny"
HEADS = ("rg_a", "rg_b")
IMAGE_WH = (160, 120)
# Boxes in pixels of the 160 x 120 image: the whole image, one past the right and bottom edges (clipped), one of
# a single pixel (inside one patch), one along the top edge, one in the middle.
BOXES_XYXY = np.array([[0, 0, 160, 120], [150, 100, 175, 130], [40, 40, 41, 41], [0, 0, 30, 6], [60, 30, 110, 90]],
                      dtype=np.float64)


@pytest.fixture(scope="module")
def region_repo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two region heads and their multi-head ensemble exported into one local repository, plus the artifacts."""
    root = tmp_path_factory.mktemp("regions")
    spec = get_encoder(ENCODER)
    repo = root / "repo"
    artifacts = {}
    for seed, head in enumerate(HEADS):
        artifacts[head] = write_example_region_head(spec, ExampleHead(head, seed=seed), root / head)
        export_head(artifacts[head], repo, "local")
    multi = write_multi_head_ensemble(repo, list(HEADS)).name
    return {"root": root, "repo": repo, "artifacts": artifacts, "multi": multi}


@pytest.fixture(scope="module")
def served(region_repo: dict):
    with LocalTriton(ServerConfig(repository=region_repo["repo"])) as server:
        yield server


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (IMAGE_WH[1], IMAGE_WH[0], 3), dtype=np.uint8))


def _in_process(artifact: Path, frame: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The region encoder's torch module and the head's PyTorch module on the frame and frame boxes."""
    meta, head = load_head(artifact)
    assert meta.encoder.region is not None
    graph = region_graph(load_encoder(get_encoder(ENCODER)), meta.encoder.region)
    with torch.no_grad():
        embedding = graph(torch.from_numpy(frame), torch.from_numpy(boxes))
        scores = head(embedding)
    return {EMBEDDING: embedding.numpy(), **{name: t.numpy() for name, t in zip(SCORE_OUTPUTS, scores)}}


def _raw(url: str, model: str, frame: np.ndarray, boxes: np.ndarray, outputs: tuple[str, ...]) -> dict:
    inputs = []
    for name, array, kind in ((REGION_PIXELS, frame, "UINT8"), (BOXES, boxes.astype(np.float32), "FP32")):
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                              client_timeout=CALL_TIMEOUT_S)
    return {o: result.as_numpy(o) for o in outputs}


def test_served_region_answers_equal_the_in_process_region_encoder_and_head_within_1e_5(region_repo, served, image):
    with HeadClient(served.grpc_url) as client:
        out = client.region_outputs("rg_a", image, BOXES_XYXY, embedding=True)
        inputs = region_inputs(client.info("rg_a"), image, BOXES_XYXY)
    expected = _in_process(region_repo["artifacts"]["rg_a"], inputs.frame, inputs.boxes)
    assert out[PROBS].shape == (len(BOXES_XYXY), 4) and out[EMBEDDING].shape[0] == len(BOXES_XYXY)
    np.testing.assert_allclose(out[PROBS], expected[PROBS], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[EMBEDDING], expected[EMBEDDING], rtol=0, atol=1e-5)
    assert [c.index for c in inputs.clipped] == [1]  # the box past the edges was clipped and reported
    # boxes differ, so do their answers: a pool that ignored its box would give one row five times
    assert np.ptp(out[EMBEDDING], axis=0).max() > 1e-3


def test_classify_regions_decides_each_box_as_the_crop_call_decides_the_same_probabilities(region_repo, served, image):
    with HeadClient(served.grpc_url) as client:
        info = client.info("rg_a")
        inputs = region_inputs(info, image, BOXES_XYXY)
        probs = _in_process(region_repo["artifacts"]["rg_a"], inputs.frame, inputs.boxes)[PROBS]
        # the confidence threshold in the widest gap between boxes' top-1 probabilities: accepted and low-confidence
        # boxes are both compared, and none lies within the 1e-5 that served and in-process answers may differ by
        top1 = np.sort(probs.max(axis=1))
        gap = int(np.argmax(np.diff(top1)))
        thresholds = Thresholds(min_confidence=float(top1[gap:gap + 2].mean()), min_margin=0.0)
        predictions = client.classify_regions("rg_a", image, BOXES_XYXY, top_k=2, thresholds=thresholds)

    async def call() -> list:
        async with AsyncHeadClient(served.grpc_url) as aio:
            return await aio.classify_regions("rg_a", image, BOXES_XYXY, top_k=2, thresholds=thresholds)

    expected = decide(info, probs, thresholds, top_k=2)  # the crop call's decisions for these probabilities
    assert len({p.reason for p in expected}) == 2, [p.reason for p in expected]
    for got in (predictions, asyncio.run(call())):
        assert [(p.label, p.reason) for p in got] == [(p.label, p.reason) for p in expected]
        np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in expected], atol=1e-5)
        assert all(p.version == info.version and len(p.top_k) == 2 for p in got)


def test_an_image_without_boxes_gets_no_decisions_and_the_server_never_answers_one(served, image):
    with HeadClient(served.grpc_url) as client:
        assert client.classify_regions("rg_a", image, np.zeros((0, 4))) == []
        out = client.region_outputs("rg_a", image, [], embedding=True)
        frame = region_inputs(client.info("rg_a"), image, BOXES_XYXY[:1]).frame
    assert out[PROBS].shape == (0, 4) and out[EMBEDDING].shape[0] == 0
    # sent anyway, Triton refuses it (so the empty list above came without a request)
    with pytest.raises(InferenceServerException, match="rg_a"):
        _raw(served.grpc_url, "rg_a", frame, np.zeros((0, 4)), (PROBS,))


@pytest.mark.parametrize(("box", "match"), [
    ([30, 30, 30, 60], r"box 1 \(30, 30, 30, 60\) has no area"),
    ([200, 10, 260, 50], r"box 1 \(200, 10, 260, 50\) lies wholly outside the 160x120 image"),
    ([10, 10, float("nan"), 50], r"box 1 .* not a finite number"),
])
def test_a_box_that_pools_nothing_is_refused_by_index_before_anything_is_sent(served, image, box, match):
    with HeadClient(served.grpc_url) as client, pytest.raises(BadInputError, match=match):
        client.classify_regions("rg_a", image, [[0, 0, 10, 10], box])


def test_crops_sent_to_a_region_head_are_refused_pointing_at_the_region_call(served, image):
    with HeadClient(served.grpc_url) as client, pytest.raises(BadInputError, match="call classify_regions"):
        client.classify("rg_a", [image.crop((0, 0, 40, 40))])


def test_the_served_encoder_refuses_a_frame_box_without_area_naming_its_row(served, image):
    with HeadClient(served.grpc_url) as client:
        frame = region_inputs(client.info("rg_a"), image, BOXES_XYXY[:1]).frame
    with pytest.raises(InferenceServerException, match=r"row 1 \(5, 5, 5, 9\) has no area inside the 64x64 frame"):
        _raw(served.grpc_url, "rg_a", frame, np.array([[0, 0, 8, 8], [5, 5, 5, 9]]), (PROBS,))


def test_more_boxes_than_the_cap_are_refused_naming_the_cap_by_the_client_and_by_the_server(served, image):
    boxes = np.tile([[10.0, 10.0, 50.0, 40.0]], (MAX_BOXES + 1, 1))
    with HeadClient(served.grpc_url) as client:
        assert client.info("rg_a").served.extra[MAX_BOXES_KEY] == str(MAX_BOXES)
        with pytest.raises(BadInputError, match=rf"{MAX_BOXES + 1} boxes for one image, more than the {MAX_BOXES} "):
            client.classify_regions("rg_a", image, boxes)
        inputs = region_inputs(client.info("rg_a"), image, boxes[:1])
    with pytest.raises(InferenceServerException, match=rf"batch-size must be <= {MAX_BOXES}"):
        _raw(served.grpc_url, "rg_a", inputs.frame, np.tile(inputs.boxes, (MAX_BOXES + 1, 1)), (PROBS,))


def test_the_multi_head_region_ensemble_answers_each_head_as_its_own_ensemble(region_repo, served, image):
    with HeadClient(served.grpc_url) as client:
        own = {h: client.region_outputs(h, image, BOXES_XYXY)[PROBS] for h in HEADS}
        inputs = region_inputs(client.info("rg_a"), image, BOXES_XYXY)
    names = tuple(multi_head_output_name(h, PROBS) for h in HEADS)
    multi = _raw(served.grpc_url, region_repo["multi"], inputs.frame, inputs.boxes, names)
    for head, name in zip(HEADS, names):
        np.testing.assert_allclose(multi[name], own[head], rtol=0, atol=1e-6)
    assert not np.allclose(own["rg_a"], own["rg_b"])  # two heads, two answers


def test_repo_validate_and_list_understand_the_region_ensemble_and_catch_a_cap_its_head_refuses(region_repo, tmp_path):
    cli = [sys.executable, "-m", "headserve.app"]
    ok = subprocess.run([*cli, "repo", "validate", str(region_repo["repo"])], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stdout + ok.stderr
    listing = subprocess.run([*cli, "repo", "list", str(region_repo["repo"])], capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "ensemble (regions)" in rows["rg_a"] and "encoder (regions)" in rows["encoder_dinov3_tiny_region64"]
    broken = tmp_path / "repo"
    shutil.copytree(region_repo["repo"], broken)
    config = broken / "rg_a" / "config.pbtxt"
    config.write_text(config.read_text().replace(f'string_value: "{MAX_BOXES}"', 'string_value: "999"'))
    problems = [str(p) for p in validate_repository(broken)]
    assert any(f"max_boxes 999 exceeds the max_batch_size {MAX_BOXES} of its head step 'rg_a_head'" in p
               for p in problems), problems


def test_a_crop_head_and_a_region_head_are_each_refused_on_the_other_modes_encoder(region_repo, tmp_path):
    spec = get_encoder(ENCODER)
    crop = write_example_head(spec, ExampleHead("crop_t"), tmp_path / "crop_t")
    region_model = region_encoder_model_name(ENCODER, load_head(region_repo["artifacts"]["rg_a"])[0].encoder.region.resolution)
    # a repository whose crop encoder's place holds the region encoder: the crop head is refused, nothing written
    planted = tmp_path / "planted"
    _plant(region_repo["repo"] / region_model, planted / "encoder_dinov3_tiny")
    with pytest.raises(EncoderMismatchError, match=r"trained on .* in crop mode, but the encoder .* in region "):
        export_head(crop, planted, "local")
    assert not (planted / "crop_t").exists() and not (planted / "crop_t_head").exists()
    # and the reverse: the region encoder's place holds a crop encoder
    export_head(crop, tmp_path / "crops", "local")
    _plant(tmp_path / "crops" / "encoder_dinov3_tiny", tmp_path / "crops" / region_model)
    with pytest.raises(EncoderMismatchError, match=r"in region \(masked-mean, 64 px, patch 8\) mode, but .* crop mode"):
        export_head(region_repo["artifacts"]["rg_b"], tmp_path / "crops", "local")
    assert not (tmp_path / "crops" / "rg_b").exists()


def _plant(model_dir: Path, as_dir: Path) -> None:
    """Copy a model's directory under another model name (its config renamed to match)."""
    shutil.copytree(model_dir, as_dir)
    config = parse((as_dir / "config.pbtxt").read_text())
    (as_dir / "config.pbtxt").write_text((as_dir / "config.pbtxt").read_text().replace(
        f'name: "{config.name}"', f'name: "{as_dir.name}"'))


def test_the_production_region_repository_validates_and_refuses_tensorrt(region_repo, tmp_path):
    repo = tmp_path / "prod"
    export_head(region_repo["artifacts"]["rg_a"], repo, "production")
    assert validate_repository(repo) == []
    encoder = parse(next(repo.glob("encoder_*/config.pbtxt")).read_text())
    ensemble = parse((repo / "rg_a" / "config.pbtxt").read_text())
    assert encoder.platform == "onnxruntime_onnx" and encoder.max_batch_size == 0 and ensemble.max_batch_size == 0
    assert not encoder.HasField("dynamic_batching") and not encoder.model_warmup
    assert [list(t.dims) for t in ensemble.input] == [[1, 64, 64, 3], [-1, 4]]
    with pytest.raises(Exception, match="TensorRT"):
        export_head(region_repo["artifacts"]["rg_b"], tmp_path / "trt", "production",
                    options=replace(RuntimeOptions(), tensorrt=TensorRTOptions()))


def test_classify_regions_command_writes_one_row_per_box_as_the_library_call_decides_it(served, digits_dataset, tmp_path):
    from headserve.client.crops import crops_from_yolo

    refs = list(crops_from_yolo(digits_dataset))
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, "-m", "headserve.app", "classify", "--yolo", str(digits_dataset),
                           "--regions", "--head", "rg_a", "--url", served.grpc_url, "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["source"], r["box_xyxy"]) for r in rows] == [(r.origin, [round(v, 2) for v in r.box_xyxy]) for r in refs]
    first = [i for i, r in enumerate(refs) if r.image == refs[0].image]
    with HeadClient(served.grpc_url) as client:
        expected = client.classify_regions("rg_a", refs[0].image, [refs[i].box_xyxy for i in first])
    assert [(rows[i]["label"], rows[i]["decision"]) for i in first] == [(p.label, p.reason.value) for p in expected]
    assert rows[0]["version"] == "1"


def test_an_encoded_image_variant_of_a_region_head_is_refused_naming_why(region_repo, tmp_path):
    from headserve.errors import RepositoryError
    from headserve.export.encoded_input import add_encoded_input

    repo = tmp_path / "repo"
    shutil.copytree(region_repo["repo"], repo)
    with pytest.raises(RepositoryError, match="'rg_a' is a region head .* has no boxes to send"):
        add_encoded_input(repo, "rg_a")
    assert not (repo / "rg_a_encoded").exists()
