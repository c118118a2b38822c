"""Head artifacts: JSON + safetensors, atomic, and readable when written before encoder metadata existed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from headserve.artifact import HeadMeta, load_meta, load_tensors, save_artifact
from headserve.contract import EncoderIdentity
from headserve.errors import ArtifactError, EncoderMismatchError


def _meta(**over) -> HeadMeta:
    values = dict(name="h", encoder_type="dinov3", encoder_model="facebook/dinov3-vitb16-pretrain-lvd1689m",
                  embedding_dim=4, classes=["a", "b", "bg"], background_indices=[2])
    values.update(over)
    return HeadMeta.from_dict(values)  # the flat fields meta.json holds


def test_artifact_round_trips_meta_and_weights(tmp_path):
    tensors = {"w": np.arange(8, dtype=np.float32).reshape(2, 4)}
    save_artifact(tmp_path / "a", _meta(), tensors)
    digest = hashlib.sha256((tmp_path / "a" / "head.safetensors").read_bytes()).hexdigest()
    assert load_meta(tmp_path / "a") == replace(_meta(), weights_sha256=digest)  # meta.json records its weights
    np.testing.assert_array_equal(load_tensors(tmp_path / "a")["w"], tensors["w"])
    assert not list(tmp_path.glob(".*")), "no staging directories are left behind"


def test_meta_without_encoder_type_reads_as_a_clip_head_with_old_field_names(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(json.dumps(
        {"name": "old", "clip_model": "ViT-B-32", "labelmap": ["cat", "dog"], "embedding_dim": 512,
         "proba_mode": "softmax"}))
    meta = load_meta(tmp_path / "old")
    assert meta.encoder.encoder_type == "clip"
    assert meta.encoder.model == "ViT-B-32" and meta.classes == ["cat", "dog"]
    assert meta.extra["unread_fields"] == ["proba_mode"]


def test_meta_missing_a_required_field_names_the_field_and_file(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text(json.dumps({"name": "x", "classes": ["a", "b"]}))
    with pytest.raises(ArtifactError, match=r"meta\.json: field 'encoder_model' is missing"):
        load_meta(tmp_path / "bad")


def test_meta_that_is_not_json_names_the_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text('{\n  "name": "x",\n  oops\n}')
    with pytest.raises(ArtifactError, match=r"meta\.json:3: not valid JSON"):
        load_meta(tmp_path / "bad")


def test_background_index_outside_the_classes_is_refused():
    with pytest.raises(ArtifactError, match=r"background indices \[7\]"):
        _meta(background_indices=[7])


def test_failed_save_leaves_the_previous_artifact_intact(tmp_path):
    save_artifact(tmp_path / "a", _meta(), {"w": np.zeros(2, dtype=np.float32)})
    with pytest.raises(Exception):
        save_artifact(tmp_path / "a", _meta(name="new"), {"w": "not an array"})  # type: ignore[dict-item]
    assert load_meta(tmp_path / "a").name == "h"
    assert not list(tmp_path.glob(".*"))


def test_encoder_mismatch_names_both_encoders():
    with pytest.raises(EncoderMismatchError, match=r"trained on dinov3:.*embedding_dim 4.*clip:ViT-B-32 \(embedding_dim 512"):
        _meta().encoder.require_match(EncoderIdentity("clip", "ViT-B-32", 512), "h")


def test_an_older_meta_with_ood_figures_in_extra_reads_them_once_and_writes_them_once(tmp_path):
    old = {"name": "h", "encoder_type": "dinov3", "encoder_model": "m", "embedding_dim": 4, "classes": ["a", "b"],
           "ood_threshold": 12.5,
           "extra": {"ood": {"method": "mahalanobis_shared_cov", "quantile": 0.9},
                     "drift_reference": {"format": 1, "classes": ["a", "b"], "ood_threshold": 12.5,
                                         "ood_quantile": 0.9, "validation_ood_rate": 0.1}}}
    meta = HeadMeta.from_dict(old)
    assert (meta.ood_threshold, meta.ood_quantile) == (12.5, 0.9)
    assert meta.extra["ood"] == {"method": "mahalanobis_shared_cov"}
    assert meta.extra["drift_reference"] == {"format": 1, "classes": ["a", "b"], "validation_ood_rate": 0.1}
    written = meta.to_json()
    assert written.count('"ood_threshold"') == 1 and written.count('"ood_quantile"') == 1
    assert written.count("12.5") == 1 and written.count("0.9") == 1
    assert HeadMeta.from_dict(json.loads(written)) == meta
    # the figures only in the drift reference (a head whose top-level threshold was not written) still read
    only_reference = {**old, "ood_threshold": None, "extra": {"drift_reference": old["extra"]["drift_reference"]}}
    assert (HeadMeta.from_dict(only_reference).ood_threshold, HeadMeta.from_dict(only_reference).ood_quantile) == (
        12.5, 0.9)


def test_a_meta_whose_embedding_dim_is_not_a_width_is_an_artifact_error_naming_the_file_and_value(tmp_path):
    (tmp_path / "bad").mkdir()
    for dim in (-3, "4", 2.5):
        (tmp_path / "bad" / "meta.json").write_text(json.dumps(
            {"name": "x", "encoder_model": "m", "embedding_dim": dim, "classes": ["a", "b"]}))
        with pytest.raises(ArtifactError, match=rf"bad/meta\.json: field 'embedding_dim' is {dim!r}, not a whole"):
            load_meta(tmp_path / "bad")
