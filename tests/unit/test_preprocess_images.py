"""Images are read as people see them: EXIF-upright, 16-bit and float scaled, bounded in size, fully decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headserve.errors import ImageDecodeError, ImageTooLargeError
from headserve.preprocess import DEFAULT_MAX_PIXELS, load_image, oriented_size

# EXIF orientation -> the transpose that turns the stored pixels upright (what viewers do), and its inverse,
# which makes stored pixels out of a displayed image.
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
INVERSE = {**UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
JPEG_NOISE = 8.0  # mean grey-level difference JPEG (quality 95, chroma subsampled) leaves on random colour blocks


def displayed_image(width: int = 96, height: int = 64) -> Image.Image:
    """Flat 16x16 blocks of distinct colours (JPEG keeps flat blocks nearly exact), no two quadrants alike."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), np.uint8)))


def save_with_orientation(displayed: Image.Image, orientation: int, path: Path, fmt: str = "JPEG") -> Path:
    stored = displayed.transpose(INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_a_jpeg_with_an_exif_orientation_loads_as_it_is_displayed(tmp_path, orientation):
    shown = displayed_image()
    path = save_with_orientation(shown, orientation, tmp_path / f"o{orientation}.jpg")
    with Image.open(path) as raw:
        stored_size = raw.size
    got = load_image(path)
    assert got.size == shown.size == oriented_size(path)
    assert mean_diff(got, shown) < JPEG_NOISE
    assert load_image(path.read_bytes()).size == shown.size  # bytes (the decoder model's path) alike
    if orientation in (5, 6, 7, 8):
        assert stored_size == (shown.size[1], shown.size[0])  # the file really stores the rotated pixels


def test_yolo_boxes_of_a_rotated_phone_jpeg_crop_the_displayed_region_in_training_and_the_client(tmp_path):
    from headserve.client.crops import crops_from_yolo
    from headserve.train.dataset import load_crop, read_yolo

    shown = displayed_image(96, 64)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("thing\n")
    save_with_orientation(shown, 6, tmp_path / "images" / "phone.jpg")
    # Box in the displayed image: x 16..48, y 16..48 of 96x64 -> normalised (cx, cy, w, h).
    (tmp_path / "labels" / "phone.txt").write_text("0 0.3333333 0.5 0.3333333 0.5\n")
    data = read_yolo(tmp_path)
    assert [o.box for o in data.objects] == [pytest.approx((16, 16, 48, 48))]
    trained = load_crop(data.objects[0])
    want = shown.crop((16, 16, 48, 48))
    assert mean_diff(trained, want) < JPEG_NOISE
    assert mean_diff(shown.transpose(INVERSE[6]).crop((16, 16, 48, 48)), want) > 5 * JPEG_NOISE  # what it was
    (ref,) = list(crops_from_yolo(tmp_path))
    assert ref.box_xyxy == pytest.approx(data.objects[0].box)
    assert np.array_equal(np.asarray(ref.load()), np.asarray(trained))  # the same crop, bit for bit


def _png_grey16(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_saturated():
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).round()
    image = load_image(_png_grey16(ramp))
    assert Image.open(io.BytesIO(_png_grey16(ramp))).mode == "I;16"
    got = np.asarray(image)[..., 0].astype(int)
    assert np.array_equal(got, np.rint(ramp / 257).astype(int))
    assert len(np.unique(got)) > 200  # a saturating conversion leaves 2 levels


def test_32_bit_integer_and_float_greys_are_scaled_and_out_of_range_values_refused(tmp_path):
    ints = Image.fromarray(np.full((8, 8), 30000, np.int32), mode="I")
    assert np.asarray(load_image(ints))[0, 0].tolist() == [117, 117, 117]  # 30000 / 257
    floats = Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F")
    floats.save(tmp_path / "half.tiff")
    assert np.asarray(load_image(tmp_path / "half.tiff"))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ImageDecodeError, match=r"mode F\) holds values in \[0, 200\], outside \[0, 1\]"):
        load_image(Image.fromarray(np.array([[0, 200]] * 4 * 2, np.float32).reshape(4, 4), mode="F"))
    with pytest.raises(ImageDecodeError, match=r"mode I\) holds values in \[-5, -5\], outside \[0, 65535\]"):
        load_image(Image.fromarray(np.array([[-5] * 4] * 4, np.int32), mode="I"))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_dropped_as_documented_each_pixel_keeping_its_stored_colour(mode, tmp_path):
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA")
    image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(tmp_path / "t.png")
    got = load_image(tmp_path / "t.png")
    want = Image.open(tmp_path / "t.png").convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(want))
    if mode == "RGBA":  # a fully transparent pixel is not blacked out: its colour stays
        assert np.array_equal(np.asarray(got), np.asarray(rgba)[..., :3])


def test_an_image_over_the_pixel_cap_is_refused_before_decoding_with_the_cap_in_the_message(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (8000, 7000)).save(path)  # 56 MP of zeros: a few hundred KB on disk
    assert path.stat().st_size < 1_000_000 and 8000 * 7000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLargeError, match=r"8000x7000 = 56000000 pixels, over the cap of 50000000"):
        load_image(path)
    with pytest.raises(ImageTooLargeError, match=r"over the cap of 10000"):
        load_image(_png_grey16(np.zeros((200, 200))), max_pixels=10_000)
    assert load_image(_png_grey16(np.zeros((100, 100))), max_pixels=10_000).size == (100, 100)


def test_pillows_own_decompression_bomb_error_is_an_image_error_naming_the_cap(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this, at open
    with pytest.raises(ImageTooLargeError, match=r"decompression bomb.*the cap here is 1000000 pixels"):
        load_image(_png_grey16(np.zeros((100, 100))), max_pixels=1_000_000)


def test_the_client_reports_an_oversized_crop_as_bad_input():
    from headserve.client import BadInputError
    from headserve.client.discovery import HeadInfo
    from headserve.client.inputs import prepare
    from headserve.contract import EncoderIdentity, ServedHead
    from headserve.encoders import get_encoder

    info = HeadInfo(ServedHead("h", ("a", "b"), EncoderIdentity.from_spec(get_encoder("clip:tiny"))), 8, ())
    with pytest.raises(BadInputError, match=r"over the cap of 10000"):
        prepare([_png_grey16(np.zeros((200, 200)))], info, max_pixels=10_000)


def test_a_truncated_jpeg_fails_when_it_is_opened_not_later(tmp_path):
    full = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(full, format="JPEG", quality=95)  # large enough that half keeps the header
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with Image.open(cut) as header_only:  # the header alone reads fine: the check that let it through before
        assert header_only.size == (256, 192)
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg does not decode .*truncated"):
        load_image(cut)
