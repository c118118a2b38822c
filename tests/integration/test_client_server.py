"""The client against the real local Triton: decisions, batching, asyncio, compression, bad input."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from PIL import Image
from support.twins import TINY_ENCODERS

from headserve.client import (
    AsyncHeadClient,
    BadInputError,
    ConnectionOptions,
    DeadlineExceededError,
    HeadClient,
    ModelNotReadyError,
    Reason,
    ServerUnavailableError,
    Thresholds,
)
from headserve.client.crops import crop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crops(trained_heads):
    """Held-out crops (PIL) and labels of each head, keyed by encoder name."""
    from headserve.train.dataset import load_crop

    return {enc: ([load_crop(o) for o in h.outcome.test_objects], h.outcome.test_labels)
            for enc, h in trained_heads.items()}


@pytest.fixture(scope="module")
def client(triton):
    with HeadClient(triton.grpc_url) as c:
        yield c


@pytest.mark.parametrize("enc", TINY_ENCODERS)
def test_served_probabilities_equal_the_in_process_head_on_the_same_pixels(enc, trained_heads, crops, client):
    import torch

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.client.inputs import prepare
    from headserve.encoders import get_encoder
    from headserve.head import load_head
    from headserve.train.embed import embed_pixels

    head = trained_heads[enc]
    info = client.info(head.name)
    assert info.encoder_type == enc.split(":")[0] and info.preprocess == get_encoder(enc).preprocess
    served = client.probabilities(head.name, crops[enc][0])
    meta, module = load_head(head.artifact)
    emb = embed_pixels(encoder_graph(load_encoder(get_encoder(enc))), prepare(crops[enc][0], info))
    with torch.no_grad():
        reference = module(torch.from_numpy(emb))[1].numpy()
    assert served.shape == (len(crops[enc][0]), len(meta.classes))
    np.testing.assert_allclose(served, reference, atol=1e-4)


def test_each_head_decision_reason_comes_from_a_crafted_case(trained_heads, crops, client):
    head = trained_heads["clip:tiny"].name
    info = client.info(head)
    images = crops["clip:tiny"][0]
    loose = Thresholds(min_confidence=0.0, min_margin=0.0, ood_threshold=float("inf"))
    preds = client.classify(head, images, thresholds=loose)
    fg = next(i for i, p in enumerate(preds) if info.classes.index(p.label) not in info.background_indices)
    bg = next(i for i, p in enumerate(preds) if info.classes.index(p.label) in info.background_indices)
    p = preds[fg]
    assert p.reason is Reason.ACCEPTED
    assert preds[bg].reason is Reason.BACKGROUND
    too_sure = Thresholds(min_confidence=min(1.0, p.confidence + 1e-3), min_margin=0.0, ood_threshold=float("inf"))
    assert client.classify(head, [images[fg]], thresholds=too_sure)[0].reason is Reason.LOW_CONFIDENCE
    per_class = Thresholds(0.0, 0.0, float("inf"), per_class_confidence={p.label: min(1.0, p.confidence + 1e-3)})
    assert client.classify(head, [images[fg]], thresholds=per_class)[0].reason is Reason.LOW_CONFIDENCE
    tight = Thresholds(min_confidence=0.0, min_margin=min(1.0, p.margin + 1e-3), ood_threshold=float("inf"))
    assert client.classify(head, [images[fg]], thresholds=tight)[0].reason is Reason.AMBIGUOUS


def test_large_lists_are_split_into_max_batch_size_requests(trained_heads, crops, client, triton, server_counts):
    head = trained_heads["dinov3:tiny"].name
    info = client.info(head)
    images = (crops["dinov3:tiny"][0] * 200)[: 2 * info.max_batch_size + 5]
    counts = server_counts(triton.grpc_url)
    probs = client.probabilities(head, images)
    assert probs.shape[0] == len(images)
    # requests: two full batches and the rest
    assert counts.grown(head, len(images))[head] == (3, len(images))


def test_asyncio_client_gives_the_same_decisions_as_the_sync_client(trained_heads, crops, client):
    head = trained_heads["clip:tiny"].name
    images = crops["clip:tiny"][0] * 3

    async def run():
        async with AsyncHeadClient(client.url, ConnectionOptions(max_in_flight=3)) as c:
            return await c.classify(head, images)

    got = asyncio.run(run())
    want = client.classify(head, images)
    assert [(p.label, p.reason) for p in got] == [(p.label, p.reason) for p in want]
    np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in want], atol=1e-6)


def test_gzip_compressed_requests_give_the_same_probabilities(trained_heads, crops, triton, client):
    head = trained_heads["dinov3:tiny"].name
    with HeadClient(triton.grpc_url, ConnectionOptions(compression="gzip")) as gz:
        np.testing.assert_allclose(gz.probabilities(head, crops["dinov3:tiny"][0]),
                                   client.probabilities(head, crops["dinov3:tiny"][0]), atol=1e-6)


def test_a_deadline_too_short_for_inference_raises_deadline_exceeded(trained_heads, crops, client):
    head = trained_heads["clip:tiny"].name
    client.info(head)
    with pytest.raises(DeadlineExceededError, match="raise the deadline"):
        client.classify(head, crops["clip:tiny"][0] * 20, timeout_s=1e-4)


def test_empty_list_is_refused(trained_heads, client):
    with pytest.raises(BadInputError, match="no images given"):
        client.classify(trained_heads["clip:tiny"].name, [])


def test_non_image_file_is_refused_naming_the_file(trained_heads, client, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(BadInputError, match=r"notes\.jpg does not decode"):
        client.classify(trained_heads["clip:tiny"].name, [bad])


def test_one_pixel_image_is_refused(trained_heads, client):
    with pytest.raises(BadInputError, match="is 1x1 pixels"):
        client.classify(trained_heads["clip:tiny"].name, [Image.new("RGB", (1, 1))])


def test_grayscale_and_rgba_images_are_classified_as_their_rgb_conversion(trained_heads, client):
    head = trained_heads["dinov3:tiny"].name
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), mode="L")
    rgba = Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), mode="RGBA")
    got = client.probabilities(head, [gray, rgba])
    want = client.probabilities(head, [gray.convert("RGB"), rgba.convert("RGB")])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_box_outside_the_image_is_refused_naming_the_box():
    with pytest.raises(BadInputError, match=r"lies outside the 32x32 image"):
        crop(Image.new("RGB", (32, 32)), (40, 40, 60, 60))


def test_unknown_head_is_model_not_ready_naming_it(client):
    with pytest.raises(ModelNotReadyError, match="head 'no_such_head' is not ready"):
        client.classify("no_such_head", [Image.new("RGB", (8, 8))])


def test_server_that_is_down_raises_unavailable_within_the_deadline_without_hanging():
    from headserve.server import free_port

    outcome: list[BaseException] = []

    def call():
        try:
            with HeadClient(f"127.0.0.1:{free_port()}", ConnectionOptions(timeout_s=2.0, retries=2,
                                                                          backoff_s=0.05)) as c:
                c.info("anything")
        except BaseException as exc:  # the assertion below reports it
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(60)  # hang detector only; the call itself is bounded by 3 attempts of 2 s
    assert not worker.is_alive(), "the client hung on a server that is down"
    assert len(outcome) == 1 and isinstance(outcome[0], ServerUnavailableError), outcome
    assert "headserve serve" in str(outcome[0])


def test_cli_classify_writes_one_json_object_per_crop(trained_heads, crops, triton, tmp_path, capsys):
    from headserve.app.cli import main

    files = []
    for i, im in enumerate(crops["clip:tiny"][0][:3]):
        files.append(tmp_path / f"c{i}.png")
        im.save(files[-1])
    code = main(["classify", "--head", trained_heads["clip:tiny"].name, "--url", triton.grpc_url,
                 "--top-k", "2", *map(str, files)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [r["image"] for r in rows] == list(map(str, files))
    assert all(len(r["top_k"]) == 2 and r["decision"] in {x.value for x in Reason} for r in rows)


def test_cli_gate_over_a_yolo_dataset_reports_each_box(trained_heads, digits_dataset, triton, capsys):
    from headserve.app.cli import main
    from headserve.client.crops import crops_from_yolo

    head = trained_heads["dinov3:tiny"]
    target = head.outcome.meta.classes[0]
    code = main(["gate", "--head", head.name, "--url", triton.grpc_url, "--target", target,
                 "--yolo", str(digits_dataset)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and len(rows) == len(list(crops_from_yolo(digits_dataset)))
    assert {"kept", "reason", "source", "box_xyxy"} <= set(rows[0])
    assert all(r["kept"] == (r["reason"] == "kept") for r in rows)
    assert all("prompt_similarity" not in r for r in rows)
    assert captured.err.count("prompt prefilter disabled for DINOv3") == 1
    assert "crops" not in captured.err  # no progress bar when stderr is not a terminal


def test_cli_reports_an_unknown_head_as_one_line_and_status_2(triton, tmp_path, capsys):
    from headserve.app.cli import main

    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    assert main(["classify", "--head", "nope", "--url", triton.grpc_url, str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headserve classify: error: head 'nope' is not ready") and len(err.splitlines()) == 1


def test_asyncio_client_reports_a_server_that_is_down_as_unavailable():
    from headserve.server import free_port

    async def run():
        async with AsyncHeadClient(f"127.0.0.1:{free_port()}",
                                   ConnectionOptions(timeout_s=2.0, retries=1, backoff_s=0.05)) as c:
            await asyncio.wait_for(c.info("anything"), timeout=60)  # hang detector only

    with pytest.raises(ServerUnavailableError, match="failed"):
        asyncio.run(run())
