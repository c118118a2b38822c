"""Region embeddings: the pooling against its plain numpy reference, the box checks, the letterbox, the encoder
mode in the identity, and the exported ONNX graph against PyTorch (tiny DINOv3 and DINOv2 twins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from headserve.artifact import HeadMeta
from headserve.backbones import encoder_graph, fingerprint, load_encoder, region_graph, region_spec_for
from headserve.contract import REGION_KEY, EncoderIdentity
from headserve.encoders import FAMILIES, get_encoder
from headserve.errors import ConfigError, EncoderMismatchError, RegionBoxError, RegionModeError
from headserve.regions import Letterbox, RegionSpec, check_boxes, default_resolution, letterbox_pixels, reference_pool

POOL_ATOL = 1e-5  # float32 matrix product against the float64 loop


@pytest.fixture(scope="module", params=["dinov3:tiny", "dinov2:tiny"])
def region(request):
    """A tiny twin's region graph at its default resolution (DINOv3: 4 register tokens, patch 8; DINOv2: none, 14)."""
    loaded = load_encoder(get_encoder(request.param))
    spec = region_spec_for(loaded)
    return loaded, spec, region_graph(loaded, spec)


def _pool(graph, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph's (K, D) answer and the (G, G, D) patch tokens it pooled from."""
    with torch.no_grad():
        tokens = graph.tokens(torch.from_numpy(pixels[None]))[0].numpy()
        out = graph(torch.from_numpy(pixels[None]), torch.from_numpy(boxes)).numpy()
    return out, tokens


def test_pooling_equals_the_numpy_reference_at_edges_inside_one_patch_and_over_padding(region):
    loaded, spec, graph = region
    r, p = spec.resolution, spec.patch_size
    image = np.random.default_rng(0).integers(0, 256, size=(r // 2 + 3, r * 2, 3), dtype=np.uint8)  # wide: pad below
    from PIL import Image

    pixels, box = letterbox_pixels(Image.fromarray(image), spec)
    assert box.content_height < r and (pixels[box.content_height:] == spec.pad_value).all()
    boxes = np.array([
        [0, 0, r, r],  # the whole frame, padding included
        [0, 0, 1.5, 2.0],  # the top-left corner, inside one patch
        [p + 0.25, p + 0.5, p + 1.0, p + 3.0],  # a sliver inside one interior patch
        [r - p / 2, r - p / 3, r, r],  # the bottom-right corner, at the frame's edge
        [r - 3, 1, r + 40, r + 9],  # past the right and bottom edges: the graph clips to the frame
        [1.5, box.content_height - 2, r - 7.25, r - 1],  # from the image down into the padding
        [2.2, 3.7, r / 2 + 0.3, box.content_height - 0.6],  # fractional edges across several patches
    ], dtype=np.float32)
    out, tokens = _pool(graph, pixels, boxes)
    assert tokens.shape == (spec.grid, spec.grid, loaded.spec.embedding_dim)
    assert np.abs(out - reference_pool(tokens, boxes, p)).max() <= POOL_ATOL
    # a box inside one patch is that patch's token, whatever its size; an independent check of the reference
    inside = tokens[1, 1] / np.linalg.norm(tokens[1, 1])
    assert np.abs(out[2] - inside).max() <= POOL_ATOL
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_the_grid_is_the_patch_tokens_without_the_cls_and_register_tokens(region):
    loaded, spec, graph = region
    registers = int(getattr(loaded.full_model.config, "num_register_tokens", 0))
    assert graph.grid.prefix_tokens == 1 + registers  # DINOv3's twin has 4 registers, DINOv2 none
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, spec.resolution, spec.resolution, 3), dtype=np.uint8)
    with torch.no_grad():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - graph.mean) / graph.std
        hidden = loaded.full_model(pixel_values=x).last_hidden_state[0]
        tokens = graph.tokens(torch.from_numpy(pixels))[0]
    assert hidden.shape[0] == 1 + registers + spec.grid ** 2
    assert torch.equal(tokens.reshape(-1, tokens.shape[-1]), hidden[1 + registers:])


def test_a_box_with_no_area_in_the_frame_pools_to_nan_not_to_an_answer(region):
    _, spec, graph = region
    pixels = np.zeros((spec.resolution, spec.resolution, 3), dtype=np.uint8)
    out, _ = _pool(graph, pixels, np.array([[5, 5, 5, 9], [spec.resolution + 1, 0, spec.resolution + 9, 4]], np.float32))
    assert np.isnan(out).all()


def test_no_boxes_give_an_empty_result_in_the_checks_and_the_graph(region):
    loaded, spec, graph = region
    assert len(check_boxes([], 640, 480)) == 0 and check_boxes(np.zeros((0, 4)), 640, 480).boxes.shape == (0, 4)
    out, _ = _pool(graph, np.zeros((spec.resolution, spec.resolution, 3), np.uint8), np.zeros((0, 4), np.float32))
    assert out.shape == (0, loaded.spec.embedding_dim)


def test_boxes_past_the_image_edge_are_clipped_and_reported():
    checked = check_boxes([[10, 10, 50, 40], [-5, 20, 30, 700], [600, 0, 645.5, 10]], 640, 480)
    assert checked.boxes.tolist() == [[10, 10, 50, 40], [0, 20, 30, 480], [600, 0, 640, 10]]
    assert [(c.index, c.original) for c in checked.clipped] == [(1, (-5, 20, 30, 700)), (2, (600, 0, 645.5, 10))]
    assert checked.clipped[0].describe() == "box 1 (-5, 20, 30, 700) reached past the image edge; clipped to (0, 20, 30, 480)"


@pytest.mark.parametrize("bad, why", [
    ([30, 10, 30, 40], r"box 2 \(30, 10, 30, 40\) has no area"),
    ([30, 40, 60, 12], r"box 2 \(30, 40, 60, 12\) has no area"),
    ([700, 10, 800, 40], r"box 2 \(700, 10, 800, 40\) lies wholly outside the 640x480 image"),
    ([-50, -40, 0, 0], r"box 2 \(-50, -40, 0, 0\) lies wholly outside"),
    ([1, 2, float("nan"), 4], r"box 2 \(1, 2, nan, 4\) has a coordinate that is not a finite number"),
])
def test_zero_area_and_out_of_image_boxes_are_refused_naming_index_and_value(bad, why):
    with pytest.raises(RegionBoxError, match=f"^frame.jpg: {why}") as caught:
        check_boxes([[0, 0, 10, 10], [5, 5, 20, 20], bad], 640, 480, origin="frame.jpg")
    assert caught.value.index == 2


def test_boxes_that_are_not_rows_of_four_are_refused():
    with pytest.raises(RegionBoxError, match=r"shape \(2, 3\) is not \(K, 4\)"):
        check_boxes([[0, 0, 1], [1, 2, 3]], 640, 480)


def test_the_letterbox_puts_the_long_side_at_the_resolution_and_maps_boxes_with_it():
    spec = RegionSpec(resolution=448)
    tall = Letterbox.of(300, 1200, spec)
    assert (tall.content_width, tall.content_height) == (112, 448)
    frame = tall.to_frame(np.array([[0, 0, 300, 1200], [30, 600, 60, 900]]))
    assert frame.dtype == np.float32 and np.allclose(frame, [[0, 0, 112, 448], [11.2, 224, 22.4, 336]])
    assert tall.to_frame(np.zeros((0, 4))).shape == (0, 4)


def test_the_region_spec_refuses_a_resolution_off_the_patch_grid_and_fields_it_does_not_know():
    with pytest.raises(ConfigError, match=r"resolution 450: must be a positive multiple of the encoder's patch size 16"):
        RegionSpec(resolution=450)
    with pytest.raises(ConfigError, match=r"pooling 'roi-max': is not one of masked-mean"):
        RegionSpec(pooling="roi-max")
    spec = RegionSpec(resolution=224, patch_size=14)
    assert RegionSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="unknown: stride"):
        RegionSpec.from_dict({**spec.to_dict(), "stride": 2})
    assert default_resolution(224, 16) == 448 and default_resolution(224, 14) == 448 and default_resolution(32, 8) == 64


def _identities() -> tuple[EncoderIdentity, EncoderIdentity]:
    crop = EncoderIdentity.from_spec(get_encoder("dinov3:tiny"), "sha256:ab")
    return crop, EncoderIdentity.from_spec(get_encoder("dinov3:tiny"), "sha256:ab", RegionSpec(64, patch_size=8))


def test_a_crop_head_is_refused_on_a_region_encoder_and_the_reverse_naming_both_modes():
    crop, region = _identities()
    with pytest.raises(EncoderMismatchError, match=r"head 'h' was trained on dinov3:tiny-dinov3 in crop mode, but the "
                                                   r"encoder is dinov3:tiny-dinov3 in region \(masked-mean, 64 px, "
                                                   r"patch 8\) mode.*--pooling region"):
        crop.require_match(region, "h")
    with pytest.raises(EncoderMismatchError, match=r"trained on dinov3:tiny-dinov3 in region \(masked-mean, 64 px, "
                                                   r"patch 8\) mode, but the encoder is dinov3:tiny-dinov3 in crop mode"):
        region.require_match(crop, "h")
    # published parameters without the key (a repository written before modes) read as crop, and still disagree
    params = crop.to_parameters()
    assert REGION_KEY not in params and EncoderIdentity.from_parameters(params) == crop
    assert [k for k, _, _ in region.differences(EncoderIdentity.from_parameters(params))] == [REGION_KEY]
    assert EncoderIdentity.from_parameters(region.to_parameters()) == region
    other = EncoderIdentity.from_spec(get_encoder("dinov3:tiny"), "sha256:ab", RegionSpec(128, patch_size=8))
    assert [k for k, _, _ in region.differences(other)] == [REGION_KEY]


def test_meta_json_records_the_mode_and_old_files_without_it_read_as_crop():
    crop, region = _identities()
    meta = HeadMeta(name="h", encoder=region, classes=["a", "b"])
    data = meta.to_dict()
    assert data[REGION_KEY]["resolution"] == 64 and HeadMeta.from_dict(data).encoder == region
    old = HeadMeta(name="h", encoder=crop, classes=["a", "b"]).to_dict()
    assert REGION_KEY not in old and HeadMeta.from_dict(old).encoder.region is None


def test_the_fingerprint_covers_the_region_spec_and_keeps_crop_fingerprints():
    loaded = load_encoder(get_encoder("dinov3:tiny"))
    pre = loaded.spec.preprocess
    graph = encoder_graph(loaded)
    assert fingerprint(graph, pre, None) == fingerprint(graph, pre)
    regional = region_graph(loaded, RegionSpec(64, patch_size=8))
    fps = {fingerprint(regional, pre, RegionSpec(r, patch_size=8)) for r in (64, 128)}
    assert len(fps) == 2 and fingerprint(graph, pre) not in fps


def test_region_pooling_on_clip_is_refused_naming_pooling_and_the_family():
    loaded = load_encoder(get_encoder("clip:tiny"))
    with pytest.raises(RegionModeError, match=r"`pooling` region is not available for clip:tiny \(family clip\): "
                                              r"CLIP trains only its pooled class token"):
        region_spec_for(loaded)


def test_every_family_has_a_patch_grid_or_says_why_not():
    from headserve.backbones import PATCH_GRIDS

    for family in FAMILIES.values():
        assert (family.name in PATCH_GRIDS) != bool(family.no_region_pooling), family.name


def test_the_onnx_region_encoder_equals_pytorch_and_the_reference(region, tmp_path: Path):
    import onnxruntime as ort

    from headserve.export.onnx_export import export_region_encoder, parity_boxes

    loaded, spec, graph = region
    written = export_region_encoder(loaded, spec, tmp_path / "model.onnx")
    assert set(written.diffs) == {"embedding", "head_input"} and max(written.diffs.values()) <= 1e-5
    assert written.identity.region == spec
    assert written.identity.fingerprint == fingerprint(graph, loaded.spec.preprocess, spec)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(spec.resolution, spec.resolution, 3), dtype=np.uint8)
    for count in (0, 5, 40):  # no boxes, a few, more than the parity check used
        boxes = parity_boxes(count, spec.resolution, spec.patch_size, rng)
        got = session.run(["embedding"], {"region_pixels": pixels[None], "boxes": boxes})[0]
        expected, tokens = _pool(graph, pixels, boxes)
        assert got.shape == (count, loaded.spec.embedding_dim)
        if count:
            assert np.abs(got - expected).max() <= 1e-5
            assert np.abs(got - reference_pool(tokens, boxes, spec.patch_size)).max() <= 1e-5
