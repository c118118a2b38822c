"""DINOv3 through timm (public weights, its own identity) and V-JEPA 2 (one image as a one-frame clip).

Real files on disk throughout: timm model directories as `hf download` writes them (config.json with
the pretrained config, model.safetensors), checkpoint files, transformers directories with their
video processor. The model hub itself is out of reach here, so its tests drive the real CLI against
an endpoint that refuses connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headserve.artifact import HeadMeta
from headserve.backbones import TIMM_OPTIONS, _preprocess_from_timm, encoder_graph, load_encoder
from headserve.contract import EncoderIdentity
from headserve.encoders import REGISTRY, get_encoder
from headserve.errors import EncoderLoadError, EncoderMismatchError
from headserve.standins import VJEPA2_SIZES, write_random_weights

TIMM_ROWS = sorted(n for n, s in REGISTRY.items() if s.encoder_type == "dinov3-timm" and not s.is_tiny)
VJEPA2_ROWS = sorted(n for n, s in REGISTRY.items() if s.encoder_type == "vjepa2" and not s.is_tiny)


def _pixels(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))


def _meta(spec_name: str) -> HeadMeta:
    spec = get_encoder(spec_name)
    return HeadMeta(name="pets", encoder=EncoderIdentity.from_spec(spec), classes=["cat", "dog"])


# ---------------------------------------------------------------------------------------------
# Registry rows agree with the libraries' own definitions


def test_the_timm_dinov3_rows_are_timms_published_dinov3_vits_with_their_pretrained_configs():
    import timm
    from timm.models import get_pretrained_cfg

    published = set(timm.list_models("*dinov3*", pretrained=True))
    for name in TIMM_ROWS:
        spec = get_encoder(name)
        assert spec.model_id in published, name
        assert spec.pretrained == f"timm/{spec.model_id}" == get_pretrained_cfg(spec.model_id).hf_hub_id
        with torch.device("meta"):  # the architecture's width without allocating a 7B model
            model = timm.create_model(spec.model_id, pretrained=False, **TIMM_OPTIONS)
        assert model.num_features == spec.embedding_dim, name
        cfg = timm.data.resolve_data_config(pretrained_cfg=get_pretrained_cfg(spec.model_id).to_dict())
        assert _preprocess_from_timm(cfg, name) == spec.preprocess, name


def test_the_vjepa2_rows_have_the_width_and_processor_settings_of_their_checkpoints():
    from transformers import VJEPA2VideoProcessor

    assert {n: get_encoder(n).embedding_dim for n in VJEPA2_ROWS} == {
        "vjepa2:vitl": 1024, "vjepa2:vith": 1280, "vjepa2:vitg": 1408, "vjepa2:vitg-384": 1408}
    for name in VJEPA2_ROWS:
        spec = get_encoder(name)
        assert VJEPA2_SIZES[name.split(":", 1)[1]]["hidden_size"] == spec.embedding_dim
        processor = VJEPA2VideoProcessor(crop_size=spec.preprocess.input_size)
        assert spec.preprocess.resize_size == processor.size["shortest_edge"], name


# ---------------------------------------------------------------------------------------------
# DINOv3 through timm: another identity, weights from a directory or a file, preprocessing from its config


def test_a_head_trained_on_timm_dinov3_is_refused_on_transformers_dinov3_naming_both():
    timm_head, hf_head = _meta("dinov3-timm:vits16"), _meta("dinov3:vits16")
    assert timm_head.embedding_dim == hf_head.embedding_dim == 384  # the width alone would not tell them apart
    with pytest.raises(EncoderMismatchError, match=r"trained on dinov3-timm:vit_small_patch16_dinov3\.lvd1689m .*"
                                                   r"is dinov3:facebook/dinov3-vits16-pretrain-lvd1689m"):
        timm_head.encoder.require_match(EncoderIdentity.from_spec(get_encoder("dinov3:vits16")), timm_head.name)
    with pytest.raises(EncoderMismatchError, match=r"trained on dinov3:facebook/dinov3-vits16-pretrain-lvd1689m .*"
                                                   r"is dinov3-timm:vit_small_patch16_dinov3\.lvd1689m"):
        hf_head.encoder.require_match(EncoderIdentity.from_spec(get_encoder("dinov3-timm:vits16")), hf_head.name)


def test_timm_dinov3_loads_a_model_directory_and_takes_its_preprocessing_from_the_directorys_config(tmp_path):
    spec = write_random_weights("dinov3-timm:vits16", tmp_path, layers=0)
    config_file = Path(spec.pretrained) / "config.json"
    config = json.loads(config_file.read_text())
    # another transform than the registry's, so only the directory's own config can produce it
    config["pretrained_cfg"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], interpolation="bilinear",
                                    crop_pct=0.875)
    config_file.write_text(json.dumps(config))
    loaded = load_encoder(spec)
    assert json.loads(loaded.spec.preprocess.to_json()) == {"input_size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                                "resize": "shortest_side_center_crop", "interpolation": "bilinear",
                                                "resize_size": 292}  # floor(256 / 0.875), as timm's eval transform
    assert encoder_graph(loaded)(_pixels(256)).shape == (2, 384)


def test_timm_dinov3_refuses_a_transform_the_client_cannot_mirror(tmp_path):
    spec = write_random_weights("dinov3-timm:vits16", tmp_path, layers=0)
    config_file = Path(spec.pretrained) / "config.json"
    config = json.loads(config_file.read_text())
    config["pretrained_cfg"]["crop_mode"] = "border"
    config_file.write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match=r"crop_mode 'border'.* not one headserve can mirror"):
        load_encoder(spec)


def test_a_timm_directory_of_another_architecture_is_refused_naming_both(tmp_path):
    small = write_random_weights("dinov3-timm:vits16", tmp_path, layers=0)
    with pytest.raises(EncoderLoadError, match=r"holds timm architecture 'vit_small_patch16_dinov3'.*"
                                               r"dinov3-timm:vitb16 is vit_base_patch16_dinov3"):
        load_encoder(get_encoder("dinov3-timm:vitb16").with_weights(small.pretrained))


def test_timm_dinov3_loads_a_checkpoint_file_and_refuses_one_of_other_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("vit_small_patch16_dinov3.lvd1689m", pretrained=False, **TIMM_OPTIONS).eval()
    save_file(source.state_dict(), str(tmp_path / "vits16.safetensors"))
    loaded = load_encoder(get_encoder("dinov3-timm:vits16").with_weights(str(tmp_path / "vits16.safetensors")))
    x = torch.randn(2, 3, 64, 64)  # dynamic image size: the same weights on a smaller input, for speed
    with torch.no_grad():
        assert torch.equal(loaded.backbone(x), source(x)), "the file's weights, pooled as the family pools"
    assert loaded.spec.preprocess == get_encoder("dinov3-timm:vits16").preprocess

    stem_only = write_random_weights("dinov3-timm:vits16", tmp_path, layers=0)  # 12 blocks missing
    wrong = str(Path(stem_only.pretrained) / "model.safetensors")
    with pytest.raises(EncoderLoadError, match=r"could not load DINOv3 \(timm\) .* the weights must be those of "
                                               r"vit_small_patch16_dinov3\.lvd1689m"):
        load_encoder(get_encoder("dinov3-timm:vits16").with_weights(wrong))


def test_missing_timm_weights_fail_naming_the_path_without_asking_the_hub(tmp_path):
    missing = str(tmp_path / "no-such" / "vits16.safetensors")
    with pytest.raises(EncoderLoadError, match=r"weights .*no-such/vits16\.safetensors do not exist; pass "
                                               r"`encoder_weights` FILE_OR_DIR"):
        load_encoder(get_encoder("dinov3-timm:vits16").with_weights(missing))


def _cli_without_a_route(*args: str, home: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI with a hub endpoint that refuses connections, and offline mode NOT set: the real failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(home))  # port 9 (discard): nothing listens
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "headserve.app", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return done, time.monotonic() - start


@pytest.mark.parametrize("encoder, hub_id", [("dinov3-timm:vits16", "timm/vit_small_patch16_dinov3.lvd1689m"),
                                             ("vjepa2:vitl", "facebook/vjepa2-vitl-fpc64-256")])
def test_a_hub_without_a_route_fails_in_seconds_naming_the_model_and_the_fix(encoder, hub_id, tmp_path):
    done, seconds = _cli_without_a_route("export", "encoder", encoder, "--repo", str(tmp_path / "repo"), home=tmp_path)
    assert done.returncode == 2, done.stderr
    assert hub_id in done.stderr and "--encoder-weights" in done.stderr and "network route" in done.stderr
    assert "Traceback" not in done.stderr
    # huggingface_hub alone retries each file five times with backoff (about 25 s a file, 50-80 s in all)
    assert seconds < 20, f"took {seconds:.0f} s to say the hub cannot be reached"
    assert not (tmp_path / "repo").exists(), "nothing is written when the encoder cannot load"


# ---------------------------------------------------------------------------------------------
# V-JEPA 2: one image, one frame, the mean of its tokens


def test_vjepa2_embeds_an_image_as_the_normalised_mean_of_the_tokens_of_a_two_frame_still_clip():
    spec = get_encoder("vjepa2:tiny")
    loaded = load_encoder(spec)
    pixels = _pixels(spec.preprocess.input_size, batch=3)
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)) \
        / torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        # the image repeated into one tubelet of two frames, as VJEPA2Embeddings does for a single frame
        tokens = loaded.full_model(pixel_values_videos=x.unsqueeze(1).repeat(1, 2, 1, 1, 1),
                                   skip_predictor=True).last_hidden_state
        got = encoder_graph(loaded)(pixels)
    assert tokens.shape == (3, (32 // 8) ** 2, 32)  # one tubelet of 4 x 4 patches, no CLS token
    torch.testing.assert_close(got, F.normalize(tokens.mean(dim=1), dim=-1), rtol=0, atol=1e-6)


def test_vjepa2_loads_a_model_directory_with_its_video_processors_settings(tmp_path):
    spec = write_random_weights("vjepa2:vitl", tmp_path, layers=0)
    processor_file = Path(spec.model_id) / "video_preprocessor_config.json"
    processor = json.loads(processor_file.read_text())
    processor.update(image_mean=[0.5, 0.5, 0.5], resample=3)  # bicubic: only the directory's file says so
    processor_file.write_text(json.dumps(processor))
    loaded = load_encoder(spec)
    assert json.loads(loaded.spec.preprocess.to_json()) == {
        "input_size": 256, "mean": [0.5, 0.5, 0.5], "std": list(spec.preprocess.std),
        "resize": "shortest_side_center_crop", "interpolation": "bicubic", "resize_size": 292, "crop_offset": "floor"}
    assert encoder_graph(loaded)(_pixels(256, batch=1)).shape == (1, 1024)


def test_the_same_weights_give_the_same_dinov3_embedding_in_transformers_and_timm():
    # The two loaders run one architecture: mapped across (q/v biases zeroed, as in the released distilled
    # checkpoints), the CLS embeddings agree to float rounding. Their identities differ because their
    # published weights and preprocessing do, not their arithmetic.
    from dinov3_weight_map import cls_embeddings, twin_pair

    hf, tm = twin_pair("vit_small_patch16_dinov3", {"hidden_size": 32, "intermediate_size": 64,
                                                    "num_hidden_layers": 2, "num_attention_heads": 2},
                       image_size=32, patch_size=8)
    a, b = cls_embeddings(hf, tm, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert (a - b).abs().max() < 1e-5
    tm.blocks[0].gamma_1.data.mul_(1.5)  # and the comparison can tell networks apart
    a, b = cls_embeddings(hf, tm, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert (a - b).abs().max() > 1e-3
