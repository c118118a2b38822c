"""Client-side resizing equals the reference pipelines, so served crops embed as training crops did."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headserve.encoders import get_encoder
from headserve.errors import ImageDecodeError
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


def test_prepare_batch_refuses_an_empty_list():
    with pytest.raises(ImageDecodeError, match="no images given"):
        prepare_batch([], get_encoder("clip:tiny").preprocess)


def test_box_outside_the_image_is_refused_with_its_coordinates():
    with pytest.raises(ImageDecodeError, match=r"\(500, 500, 600, 600\) lies outside the 64x48 image"):
        crop_box(Image.new("RGB", (64, 48)), (500, 500, 600, 600))


def test_box_partly_outside_the_image_is_clipped():
    assert crop_box(Image.new("RGB", (64, 48)), (-10, 40, 20, 90)).size == (20, 8)
