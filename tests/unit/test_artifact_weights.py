"""Export finds the encoder weights a head was trained with; the hub only when nothing local is recorded."""

from __future__ import annotations

import pytest

from headserve.artifact import HeadMeta, trained_encoder
from headserve.encoders import get_encoder
from headserve.errors import EncoderLoadError


def _meta(encoder: str, **recorded) -> HeadMeta:
    spec = get_encoder(encoder)
    values = dict(name="h", encoder_type=spec.encoder_type, encoder_model=spec.model_id, embedding_dim=spec.embedding_dim,
                  classes=["a", "b"], encoder_name=encoder, encoder_pretrained=spec.pretrained)
    return HeadMeta.from_dict({**values, **recorded})


def test_a_clip_checkpoint_recorded_in_meta_is_used_and_named(tmp_path):
    ckpt = tmp_path / "vit-b-32.pt"
    ckpt.write_bytes(b"weights")
    spec, source = trained_encoder(_meta("clip:ViT-B-32", encoder_pretrained=str(ckpt)))
    assert spec.pretrained == str(ckpt.resolve())
    assert source == f"{ckpt.resolve()} (recorded in meta.json)"


def test_a_dinov3_directory_recorded_in_meta_is_used(tmp_path):
    spec, source = trained_encoder(_meta("dinov3:vits16", encoder_model=str(tmp_path)))
    assert spec.model_id == str(tmp_path.resolve()) and "recorded in meta.json" in source


def test_weights_given_on_the_command_line_win_over_the_record(tmp_path):
    spec, source = trained_encoder(_meta("dinov3:vits16", encoder_model="/elsewhere"), weights=str(tmp_path))
    assert spec.model_id == str(tmp_path.resolve()) and source.endswith("(--encoder-weights)")


def test_recorded_weights_missing_here_fail_at_once_naming_the_path_and_the_fix():
    with pytest.raises(EncoderLoadError, match=r"trained with encoder weights /gone/ckpt.pt .* pass `encoder_weights`"):
        trained_encoder(_meta("clip:ViT-B-32", encoder_pretrained="/gone/ckpt.pt"))


def test_a_hub_tag_goes_to_the_hub():
    spec, source = trained_encoder(_meta("clip:ViT-B-32"))
    assert spec == get_encoder("clip:ViT-B-32") and source.endswith("from the model hub")
