"""The contract between export and the client: the ServedHead record, encoder identities, the family registry."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from headserve.artifact import HeadMeta
from headserve.contract import (
    HEAD_OUTPUTS,
    EncoderIdentity,
    MalformedParameterError,
    MissingParameterError,
    ServedHead,
    decoder_model_name,
    encoded_model_name,
    encoder_model_name,
    head_model_name,
    multi_head_model_name,
    prompt_model_name,
)
from headserve.encoders import (
    FAMILIES,
    REGISTRY,
    PreprocessSpec,
    encoder_types,
    get_encoder,
    get_family,
    has_text_tower,
)
from headserve.errors import EncoderMismatchError, RepositoryError, UnknownEncoderError


def served(**changes) -> ServedHead:
    spec = get_encoder("clip:tiny")
    head = ServedHead(
        name="pets",
        classes=("cat", "dog", "background"),
        encoder=EncoderIdentity.from_spec(spec, "sha256:" + "ab" * 32),
        background_indices=(2,),
        temperature=1.37,
        head_type="mlp",
        classifier="arcface",
        ood_threshold=0.8125,
        prompt_model="pets_prompts",
        prompt_classes=(0, 1, 1),
        encoded_model="pets_encoded",
    )
    return replace(head, **changes)


@pytest.mark.parametrize("head", [
    served(),
    served(ood_threshold=None, prompt_model=None, prompt_classes=(), encoded_model=None, background_indices=()),
    served(encoded_input=True, extra={"owner": "team-a"}),
    served(encoder=EncoderIdentity.from_spec(get_encoder("dinov2:tiny")), classes=("a", "b:c", "ünï")),
], ids=["every-field", "optional-fields-unset", "encoded-with-extra", "dinov2-odd-class-names"])
def test_a_served_head_reads_back_from_its_parameters_unchanged(head):
    params = head.to_parameters()
    assert all(isinstance(v, str) for v in params.values())
    back = ServedHead.from_parameters(head.name, params)
    assert back == head
    assert back.to_parameters() == params


def test_parameters_hold_exactly_the_published_keys_of_a_head_ensemble():
    params = served(prompt_model=None, prompt_classes=(), encoded_model=None).to_parameters()
    assert set(params) == {"classes", "background_indices", "encoder_type", "encoder_model", "encoder_name",
                           "embedding_dim", "preprocess", "encoder_fingerprint", "temperature", "head_type",
                           "classifier", "ood_threshold"}
    assert PreprocessSpec.from_dict(json.loads(params["preprocess"])) == get_encoder("clip:tiny").preprocess
    assert params["temperature"] == "1.37" and params["embedding_dim"] == "32"


@pytest.mark.parametrize("key, value", [
    ("temperature", "warm"),
    ("temperature", "nan"),
    ("classes", "cat, dog"),
    ("classes", '["cat"]'),
    ("classes", "[1, 2]"),
    ("background_indices", "[7]"),
    ("background_indices", '["2"]'),
    ("prompt_classes", "[0, 3]"),
    ("embedding_dim", "thirty-two"),
    ("embedding_dim", "-32"),
    ("preprocess", '{"input_size": 32}'),
    ("preprocess", '{"input_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "squash", '
                   '"interpolation": "bilinear", "sharpen": 2}'),
    ("ood_threshold", "high"),
    ("input", "jpeg"),
])
def test_a_malformed_parameter_is_a_typed_error_naming_the_key_and_value(key, value):
    params = {**served().to_parameters(), key: value}
    with pytest.raises(MalformedParameterError, match=rf"head 'pets' publishes .*'{key}'") as info:
        ServedHead.from_parameters("pets", params)
    assert info.value.key == key
    assert repr(value)[:20] in str(info.value)
    assert isinstance(info.value, RepositoryError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["classes", "preprocess"])
def test_a_missing_required_parameter_is_a_typed_error_naming_the_key(key):
    params = served().to_parameters()
    del params[key]
    with pytest.raises(MissingParameterError, match=rf"head 'pets' publishes no '{key}' parameter") as info:
        ServedHead.from_parameters("pets", params)
    assert info.value.key == key


def test_parameters_an_older_headserve_left_out_read_as_their_defaults():
    params = {"classes": '["a", "b"]', "preprocess": get_encoder("clip:tiny").preprocess.to_json()}
    head = ServedHead.from_parameters("old", params)
    assert (head.encoder_type, head.temperature, head.ood_threshold, head.prompt_model, head.background_indices) \
        == ("clip", 1.0, None, None, ())


def test_an_encoder_identity_reads_back_from_an_encoder_models_parameters():
    identity = EncoderIdentity.from_spec(get_encoder("dinov3:tiny"), "sha256:" + "cd" * 32)
    back = EncoderIdentity.from_parameters(identity.to_parameters())
    assert back == replace(identity, pretrained=None)  # the weights source is meta.json's, not published


def test_identities_differ_by_the_fields_that_decide_whether_embeddings_fit():
    clip = EncoderIdentity.from_spec(get_encoder("clip:tiny"), "sha256:1")
    assert clip.differences(replace(clip, name="other", preprocess=None)) == []
    assert clip.differences(replace(clip, fingerprint=None)) == []  # unrecorded fingerprints are not compared
    assert clip.differences(replace(clip, fingerprint="sha256:2")) == [("encoder_fingerprint", "sha256:1", "sha256:2")]
    dino = EncoderIdentity.from_spec(get_encoder("dinov3:tiny"))
    assert [key for key, _, _ in clip.differences(dino)] == ["encoder_type", "encoder_model"]
    with pytest.raises(EncoderMismatchError, match=r"head 'pets' was trained on clip:tiny-ViT .* the encoder x is "
                                                   r"dinov3:tiny-dinov3"):
        clip.require_match(dino, "pets", "encoder x")


def test_a_head_meta_reads_its_flat_fields_as_one_identity_and_writes_them_flat():
    spec = get_encoder("dinov2:tiny")
    flat = dict(encoder_type="dinov2", encoder_model=spec.model_id, embedding_dim=32, preprocess=spec.preprocess.to_dict(),
                encoder_name=spec.name, encoder_fingerprint="sha256:9", encoder_pretrained=None)
    meta = HeadMeta.from_dict(dict(name="h", classes=["a", "b"], **flat))
    assert meta.encoder == EncoderIdentity.from_spec(spec, "sha256:9")
    written = json.loads(meta.to_json())
    assert {k: written[k] for k in flat} == json.loads(json.dumps(flat)) and "encoder" not in written  # flat, as before
    assert HeadMeta.from_dict(written) == meta


@pytest.mark.parametrize("encoder_type", encoder_types())
def test_the_family_registry_answers_text_tower_for_every_registered_family(encoder_type):
    family = get_family(encoder_type)
    assert has_text_tower(encoder_type) is family.text_tower is (encoder_type == "clip")


def test_every_registered_encoder_resizes_as_its_family_declares():
    assert set(FAMILIES) == set(encoder_types())
    for spec in REGISTRY.values():
        assert (spec.preprocess.resize, spec.preprocess.interpolation) == (spec.family.resize,
                                                                           spec.family.interpolation), spec.name


def test_an_unknown_family_has_no_text_tower_and_is_a_typed_error_to_look_up():
    assert has_text_tower("siglip") is False
    with pytest.raises(UnknownEncoderError, match=r"unknown encoder family 'siglip'; known families are: clip"):
        get_family("siglip")


def test_local_weights_replace_the_field_the_family_loads_them_from(tmp_path):
    assert get_encoder("clip:ViT-B-32").with_weights(str(tmp_path)).pretrained == str(tmp_path)
    for name in ("dinov3:vitb16", "dinov2:vitb14"):
        assert get_encoder(name).with_weights(str(tmp_path)).model_id == str(tmp_path)


def test_model_names_follow_one_rule_each():
    assert encoder_model_name("clip:ViT-B-32") == "encoder_clip_ViT-B-32"
    assert [head_model_name("h"), prompt_model_name("h"), encoded_model_name("h")] == ["h_head", "h_prompts",
                                                                                       "h_encoded"]
    assert decoder_model_name("encoder_dinov3_tiny") == "decode_dinov3_tiny"
    assert multi_head_model_name("encoder_clip_tiny") == "heads_clip_tiny"


def test_the_head_graph_publishes_the_outputs_the_contract_names():
    import torch

    from headserve.contract import HEAD_ID, HEAD_OUTPUT_WIDTHS, LOGITS, OOD_SCORE, PROBS, SCORE_OUTPUTS
    from headserve.head import HeadConfig, build_serving_head

    # The serving head computes the scores, in the contract's order; the exported graph adds the head's id after them.
    assert SCORE_OUTPUTS == (LOGITS, PROBS, OOD_SCORE) and HEAD_OUTPUTS == (*SCORE_OUTPUTS, HEAD_ID)
    assert dict(HEAD_OUTPUT_WIDTHS) == {OOD_SCORE: 1, HEAD_ID: 1}
    head = build_serving_head(HeadConfig(in_dim=8, num_classes=3))
    outputs = dict(zip(SCORE_OUTPUTS, head(torch.randn(2, 8)), strict=True))
    assert {name: tuple(t.shape) for name, t in outputs.items()} == {
        name: (2, HEAD_OUTPUT_WIDTHS.get(name, 3)) for name in SCORE_OUTPUTS}
    assert torch.allclose(outputs[PROBS].sum(dim=1), torch.ones(2))  # probs, not logits, in the second place


def test_the_contract_imports_without_torch():
    code = "import sys, headserve.contract, headserve.client.discovery; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
