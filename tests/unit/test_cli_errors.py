"""Bad input gets one clear line naming the bad value and the fix, exit status 2, and no traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from headserve.app.cli import main
from headserve.errors import ImageDecodeError
from headserve.preprocess import load_image


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_unknown_encoder_name_is_named_with_the_registered_alternatives(capsys, digits_dataset, tmp_path):
    code, err = _run(capsys, "train", str(digits_dataset), "--out", str(tmp_path / "h"), "--encoder", "clip:ViT-Q-1")
    assert code == 2
    assert "unknown encoder 'clip:ViT-Q-1'" in err and "dinov3:vitb16" in err
    assert not (tmp_path / "h").exists()


def test_recipe_knob_out_of_range_is_named_with_its_range(capsys, digits_dataset, tmp_path):
    code, err = _run(capsys, "train", str(digits_dataset), "--out", str(tmp_path / "h"), "--arcface-margin", "95")
    assert code == 2
    assert "arcface_margin 95.0 must be in [0, 90) degrees" in err
    assert not (tmp_path / "h").exists()


def test_dataset_path_that_does_not_exist_is_named(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, err = _run(capsys, "train", str(missing), "--out", str(tmp_path / "h"))
    assert code == 2
    assert str(missing) in err and "does not exist" in err


def test_head_whose_embedding_dim_differs_from_its_encoder_is_refused_before_writing(capsys, trained_heads, tmp_path):
    artifact = tmp_path / "wrong_dim"
    shutil.copytree(trained_heads["clip:tiny"].artifact, artifact)
    meta = json.loads((artifact / "meta.json").read_text())
    meta["embedding_dim"] = 768
    (artifact / "meta.json").write_text(json.dumps(meta))
    repo = tmp_path / "repo"
    code, err = _run(capsys, "export", "head", str(artifact), "--repo", str(repo))
    assert code == 2
    assert "embedding_dim 768" in err and "embedding_dim 32" in err
    assert not (repo / meta["name"]).exists() and not (repo / f"{meta['name']}_head").exists()


def test_image_that_will_not_decode_is_named(tmp_path):
    bad = tmp_path / "crop.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageDecodeError, match=r"crop\.png does not decode"):
        load_image(bad)


def test_grayscale_and_rgba_crops_become_rgb(tmp_path):
    from PIL import Image

    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"crop_{mode}.png"
        Image.new(mode, (16, 12)).save(path)
        assert load_image(path).mode == "RGB"


def test_image_of_one_pixel_is_refused_with_its_size(tmp_path):
    from PIL import Image

    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(ImageDecodeError, match="1x1 pixels"):
        load_image(path)


def test_undecodable_image_in_a_dataset_is_skipped_and_reported_with_its_path(digits_dataset, tmp_path):
    from headserve.train.dataset import read_yolo

    root = tmp_path / "ds"
    shutil.copytree(digits_dataset, root)
    victim = sorted((root / "images").glob("*.png"))[0]
    victim.write_bytes(b"\x89PNG broken")
    data = read_yolo(root)
    assert victim not in data.images
    assert any(str(victim) in p for p in data.report.problems)


def test_a_device_this_machine_lacks_is_named_with_the_available_ones(capsys, digits_dataset, tmp_path):
    code, err = _run(capsys, "train", str(digits_dataset), "--out", str(tmp_path / "h"), "--device", "cuda:9")
    assert code == 2
    assert "--device cuda:9" in err and "available: cpu" in err
    assert not (tmp_path / "h").exists()


def test_an_instance_count_of_zero_is_one_line_naming_the_option(capsys, tmp_path):
    code, err = _run(capsys, "export", "encoder", "clip:tiny", "--repo", str(tmp_path / "repo"), "--instances", "0")
    assert code == 2
    assert "--instances 0: a model needs at least one instance" in err
    assert not (tmp_path / "repo").exists()


def test_weights_whose_temperature_contradicts_meta_are_refused_before_the_encoder_is_written(
        capsys, trained_heads, tmp_path):
    """An artifact from before the temperature lived only in meta.json, edited on one side: neither is trusted."""
    from safetensors.numpy import load_file, save_file

    artifact = tmp_path / "two_temperatures"
    shutil.copytree(trained_heads["clip:tiny"].artifact, artifact)
    tensors = load_file(str(artifact / "head.safetensors"))
    meta = json.loads((artifact / "meta.json").read_text())
    save_file({**tensors, "temperature": np.array([meta["temperature"] * 2], np.float32)},
              str(artifact / "head.safetensors"))
    del meta["weights_sha256"]  # such an artifact predates the weights digest too
    (artifact / "meta.json").write_text(json.dumps(meta))
    repo = tmp_path / "repo"
    code, err = _run(capsys, "export", "head", str(artifact), "--repo", str(repo))
    assert code == 2
    assert "head.safetensors stores temperature" in err and "meta.json says" in err, err
    assert not any(repo.glob("*/[0-9]*")), "no model version was written"
