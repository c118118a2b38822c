"""Client-side resizing equals the reference pipelines, so served crops embed as training crops did."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headserve.encoders import get_encoder
from headserve.errors import ConfigError, ImageDecodeError, PreprocessSpecError
from headserve.preprocess import crop_box, prepare_batch, resize_for_encoder


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    from skimage import data

    base = data.astronaut()  # a real RGB photograph shipped with scikit-image
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 512 - h), rng.integers(0, 512 - w)
    return Image.fromarray(base[y:y + h, x:x + w])


@pytest.mark.parametrize("size", [(300, 200), (150, 333), (224, 224), (97, 61)])
def test_clip_resize_matches_open_clips_eval_transform(size):
    import open_clip

    spec = get_encoder("clip:ViT-B-32").preprocess
    image = _photo(*size)
    reference = open_clip.image_transform(spec.input_size, is_train=False, mean=spec.mean, std=spec.std)(image)
    ours = torch.from_numpy(resize_for_encoder(image, spec)).permute(2, 0, 1).float() / 255.0
    ours = (ours - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_dinov3_resize_squashes_to_the_square_input():
    spec = get_encoder("dinov3:vitb16").preprocess
    out = resize_for_encoder(_photo(300, 120), spec)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


# facebook/dinov2-{small,base,large}'s preprocessor_config.json (no model hub here, so written out).
DINOV2_PROCESSOR = dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                        resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
# Sizes with odd crop margins, where rounding and truncating the offset differ, and upscaled crops.
SIZES = [(300, 200), (150, 333), (224, 224), (97, 61), (257, 301), (500, 120)]


def _normalised(pixels: np.ndarray, spec) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)


def _levels(diff: torch.Tensor, spec) -> torch.Tensor:
    """A normalised difference in uint8 steps of each channel."""
    return diff.abs() * torch.tensor(spec.std).view(3, 1, 1) * 255.0


def test_the_dinov2_spec_is_what_its_transformers_processor_says():
    from transformers import BitImageProcessor

    from headserve.backbones import _preprocess_from_processor

    spec = get_encoder("dinov2:vitb14").preprocess
    assert (spec.input_size, spec.short_side, spec.crop_offset) == (224, 256, "floor")
    assert _preprocess_from_processor(BitImageProcessor(**DINOV2_PROCESSOR), spec) == spec


@pytest.mark.parametrize("size", SIZES)
def test_dinov2_resize_equals_the_transformers_pil_processor(size):
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    spec = get_encoder("dinov2:vitb14").preprocess
    image = _photo(*size)
    processed = BitImageProcessorPil(**DINOV2_PROCESSOR)(image, return_tensors="np")
    reference = torch.from_numpy(processed["pixel_values"][0])
    torch.testing.assert_close(_normalised(resize_for_encoder(image, spec), spec), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_dinov2_resize_is_within_two_levels_of_the_default_torchvision_processor(size):
    # The default backend resizes tensors with antialias; the geometry is the same, the kernels
    # differ by rounding: at most 2 uint8 steps anywhere, far less on average.
    from transformers import BitImageProcessor

    spec = get_encoder("dinov2:vitb14").preprocess
    image = _photo(*size)
    reference = BitImageProcessor(**DINOV2_PROCESSOR)(image, return_tensors="pt")["pixel_values"][0]
    levels = _levels(_normalised(resize_for_encoder(image, spec), spec) - reference, spec)
    assert levels.max() <= 2.0 + 1e-3 and levels.mean() < 0.05, (levels.max(), levels.mean())


@pytest.mark.parametrize("size", SIZES)
def test_dinov3_squash_is_within_one_level_of_its_transformers_processor(size):
    # The processor keeps the resized image in float; ours is rounded to uint8 for the wire.
    from transformers.models.dinov3_vit.image_processing_dinov3_vit import DINOv3ViTImageProcessor

    from headserve.backbones import _preprocess_from_processor

    spec = get_encoder("dinov3:vitb16").preprocess
    processor = DINOv3ViTImageProcessor()
    assert _preprocess_from_processor(processor, spec) == spec
    image = _photo(*size)
    reference = processor(image, return_tensors="pt")["pixel_values"][0]
    levels = _levels(_normalised(resize_for_encoder(image, spec), spec) - reference, spec)
    assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.5, (levels.max(), levels.mean())


def test_specs_written_before_resize_size_existed_keep_their_bytes():
    clip = get_encoder("clip:ViT-B-32").preprocess
    assert set(clip.to_dict()) == {"input_size", "mean", "std", "resize", "interpolation"}
    dinov2 = get_encoder("dinov2:vitb14").preprocess
    assert dinov2.to_dict()["resize_size"] == 256 and dinov2.to_dict()["crop_offset"] == "floor"
    for spec in (clip, dinov2):
        assert type(spec).from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("change, message", [
    (dict(resize="squash"), "resize_size 256 needs the shortest_side_center_crop rule"),
    (dict(resize_size=200), "resize_size 200 is smaller than input_size 224"),
    (dict(crop_offset="ceil"), "crop_offset 'ceil' is not one of"),
])
def test_an_inconsistent_preprocess_spec_is_refused_by_name(change, message):
    from dataclasses import replace

    with pytest.raises(ConfigError, match=message):
        replace(get_encoder("dinov2:vitb14").preprocess, **change)


def test_prepare_batch_refuses_an_empty_list():
    with pytest.raises(ImageDecodeError, match="no images given"):
        prepare_batch([], get_encoder("clip:tiny").preprocess)


def test_box_outside_the_image_is_refused_with_its_coordinates():
    with pytest.raises(ImageDecodeError, match=r"\(500, 500, 600, 600\) lies outside the 64x48 image"):
        crop_box(Image.new("RGB", (64, 48)), (500, 500, 600, 600))


def test_box_partly_outside_the_image_is_clipped():
    assert crop_box(Image.new("RGB", (64, 48)), (-10, 40, 20, 90)).size == (20, 8)


def test_a_spec_from_a_newer_headserve_is_refused_rather_than_resized_differently():
    data = {**get_encoder("clip:ViT-B-32").preprocess.to_dict(), "pad_to_square": True}
    with pytest.raises(PreprocessSpecError, match="fields this headserve does not know: pad_to_square; upgrade headserve"):
        type(get_encoder("clip:ViT-B-32").preprocess).from_dict(data)


@pytest.mark.parametrize("change, named", [
    ({"pad_to_square": True}, "fields this headserve does not know: pad_to_square"),
    ({"input_size": None}, "does not read"),
    ({"mean": 0.5}, "does not read"),
], ids=["unknown field", "no size", "mean not a list"])
def test_a_stored_spec_that_does_not_read_is_a_typed_error_naming_what_is_wrong(change, named):
    from headserve.encoders import PreprocessSpec
    from headserve.errors import PreprocessSpecError

    data = {**get_encoder("clip:ViT-B-32").preprocess.to_dict(), **change}
    with pytest.raises(PreprocessSpecError, match=named):
        PreprocessSpec.from_dict(data)
    without = {k: v for k, v in get_encoder("clip:ViT-B-32").preprocess.to_dict().items() if k != "resize"}
    with pytest.raises(PreprocessSpecError, match="lacks the field.s. resize"):
        PreprocessSpec.from_dict(without)
