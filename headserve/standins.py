"""Real-size encoder architectures with random weights, written where ``--encoder-weights`` reads them.

Pretrained weights come from the model hub; speed does not need them: a randomly initialised
ViT-B/32 does exactly the arithmetic of a trained one. The benchmarks build these stand-ins to time
real sizes offline, loading them through the same code path as real checkpoints (an open_clip
checkpoint file, a transformers model directory with its image or video processor, a timm model
directory as `hf download` writes it). Their embeddings are meaningless, so no head that matters is
ever trained on them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from headserve.encoders import EncoderSpec, PreprocessSpec, get_encoder
from headserve.errors import UnknownEncoderError

# DINOv3 ViT sizes as the released checkpoints define them (patch 16, 4 register tokens, 224 px).
DINOV3_SIZES: dict[str, dict[str, int]] = {
    "vits16": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vitb16": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vitl16": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
}

# V-JEPA 2 encoder sizes as the released checkpoints define them (patch 16, tubelet 2; the predictor
# keeps transformers' defaults, it is not part of the embedding).
VJEPA2_SIZES: dict[str, dict[str, float]] = {
    "vitl": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4.0},
    "vith": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "mlp_ratio": 4.0},
    "vitg": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22, "mlp_ratio": 48 / 11},
    "vitg-384": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22, "mlp_ratio": 48 / 11},
}


def write_random_weights(encoder: str, directory: Path, layers: int | None = None, seed: int = 0) -> EncoderSpec:
    """Build ``encoder``'s architecture with random weights under ``directory``; returns the spec that loads it.

    ``layers`` keeps the real width and input size with fewer blocks (DINOv3 in either family and
    V-JEPA 2; 0 leaves the stem): crops and embeddings of the real size at a fraction of the compute.
    """
    import torch

    spec = get_encoder(encoder)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if spec.encoder_type == "clip" and not spec.is_tiny:
        import open_clip

        path = directory / f"{spec.model_id}-random.pt"
        if not path.is_file():
            model = open_clip.create_model(spec.model_id, pretrained=None)
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        return spec.with_weights(str(path))
    short = spec.name.split(":", 1)[1]
    if spec.encoder_type == "dinov3" and short in DINOV3_SIZES:
        target = directory / (f"dinov3-{short}-random" + (f"-{layers}l" if layers is not None else ""))
        if not (target / "config.json").is_file():
            _write_dinov3(target, DINOV3_SIZES[short], spec.preprocess, layers)
        return spec.with_weights(str(target))
    suffix = f"-{layers}l" if layers is not None else ""
    if spec.encoder_type == "dinov3-timm" and not spec.is_tiny:
        target = directory / f"{spec.model_id}-random{suffix}"
        if not (target / "config.json").is_file():
            _write_dinov3_timm(target, spec.model_id, layers)
        return spec.with_weights(str(target))
    if spec.encoder_type == "vjepa2" and short in VJEPA2_SIZES:
        target = directory / f"vjepa2-{short}-random{suffix}"
        if not (target / "config.json").is_file():
            _write_vjepa2(target, VJEPA2_SIZES[short], spec.preprocess, layers)
        return spec.with_weights(str(target))
    raise UnknownEncoderError(f"no random-weight stand-in for {encoder}; known: clip:ViT-*, "
                              f"{', '.join('dinov3:' + k for k in DINOV3_SIZES)}, dinov3-timm:* (not tiny), "
                              f"{', '.join('vjepa2:' + k for k in VJEPA2_SIZES)}")


def _write_dinov3(target: Path, sizes: dict[str, int], preprocess: PreprocessSpec, layers: int | None) -> None:
    from PIL import Image
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    config = DINOv3ViTConfig(image_size=preprocess.input_size, patch_size=16, num_register_tokens=4,
                             **{**sizes, **({"num_hidden_layers": layers} if layers is not None else {})})
    staged = target.with_name(target.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)  # what a crashed earlier run left
    DINOv3ViTModel(config).eval().save_pretrained(staged)
    side = preprocess.input_size
    DINOv3ViTImageProcessor(size={"height": side, "width": side}, image_mean=list(preprocess.mean),
                            image_std=list(preprocess.std), resample=Image.Resampling.BILINEAR).save_pretrained(staged)
    staged.replace(target)


def _write_dinov3_timm(target: Path, timm_name: str, layers: int | None) -> None:
    """timm's own hub layout (config.json with the pretrained config, model.safetensors), via timm's save_for_hf."""
    import timm
    from timm.models import save_for_hf

    from headserve.backbones import TIMM_OPTIONS

    args = {"depth": layers} if layers is not None else {}
    model = timm.create_model(timm_name, pretrained=False, **TIMM_OPTIONS, **args)
    staged = target.with_name(target.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)  # what a crashed earlier run left
    save_for_hf(model.eval(), str(staged), model_args=args or None, safe_serialization=True)
    staged.replace(target)


def _write_vjepa2(target: Path, sizes: dict[str, float], preprocess: PreprocessSpec, layers: int | None) -> None:
    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor

    config = VJEPA2Config(crop_size=preprocess.input_size, patch_size=16, tubelet_size=2,
                          **{**sizes, **({"num_hidden_layers": layers} if layers is not None else {})})
    staged = target.with_name(target.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    VJEPA2Model(config).eval().save_pretrained(staged)
    VJEPA2VideoProcessor(crop_size=preprocess.input_size).save_pretrained(staged)
    staged.replace(target)
