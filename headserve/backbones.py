"""Frozen image encoders as torch modules, built from registry entries.

A loader per encoder family turns an ``EncoderSpec`` into a backbone that maps normalised NCHW
float pixels to raw features. ``EncoderGraph`` wraps it with the preprocessing that the exported
ONNX graph carries (uint8 NHWC -> float -> normalise -> NCHW) and the L2 normalisation, so the very
module that computes training embeddings is the one exported for serving.

Encoders are frozen: every module is put in eval mode with gradients off and is never trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headserve.encoders import EncoderSpec, PreprocessSpec, has_text_tower
from headserve.errors import EncoderLoadError


@dataclass
class LoadedEncoder:
    """A built backbone with the spec it was built from (preprocessing as actually used)."""

    spec: EncoderSpec
    backbone: nn.Module  # (B, 3, S, S) normalised float -> (B, D) raw features
    full_model: nn.Module  # the whole family model (CLIP keeps its text tower for prompt prefilters)


class ClipImageTower(nn.Module):
    """open_clip CLIP image tower (``CLIP.encode_image`` without normalisation); text weights stay out."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        return self.visual(x)


class Dinov3Pooled(nn.Module):
    """transformers DINOv3 (and DINOv2): ``pooler_output``, falling back to the CLS token of ``last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


class EncoderGraph(nn.Module):
    """uint8 NHWC pixels at the encoder's input size -> L2-normalised embedding.

    This is the exported encoder: preprocessing lives in the graph so that clients send bytes,
    not float tensors four times their size.
    """

    def __init__(self, backbone: nn.Module, preprocess: PreprocessSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, S, S, 3) uint8 -> (B, D)
        x = pixels.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0  # (B, 3, S, S), float32 (float16 if halved)
        x = (x - self.mean) / self.std
        features = self.backbone(x)  # (B, D)
        return F.normalize(features, dim=-1)


# ---------------------------------------------------------------------------------------------
# Loaders, one per family. Real weights and tiny twins share the same classes and code path
# past construction.


def _load_clip(spec: EncoderSpec) -> LoadedEncoder:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = open_clip.CLIP(
            embed_dim=spec.embedding_dim,
            vision_cfg=CLIPVisionCfg(**spec.tiny["vision"]),
            text_cfg=CLIPTextCfg(**spec.tiny["text"]),
        )
    else:
        try:
            model, _, _ = open_clip.create_model_and_transforms(spec.model_id, pretrained=spec.pretrained)
        except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors alike
            raise EncoderLoadError(
                f"could not load CLIP {spec.model_id} with pretrained={spec.pretrained!r} "
                f"({exc.__class__.__name__}: {_first_line(exc)}). This machine may have no route to the model "
                "hub: download the checkpoint elsewhere and pass it with --encoder-weights FILE."
            ) from None
    return LoadedEncoder(spec=spec, backbone=ClipImageTower(model), full_model=model)


def _load_dinov3(spec: EncoderSpec) -> LoadedEncoder:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = DINOv3ViTModel(DINOv3ViTConfig(**spec.tiny["config"]))
        return LoadedEncoder(spec=spec, backbone=Dinov3Pooled(model), full_model=model)
    return _load_hub(spec, "DINOv3")


def _load_dinov2(spec: EncoderSpec) -> LoadedEncoder:
    """DINOv2 (public weights, no licence gate): the fallback when DINOv3 cannot be downloaded."""
    from transformers import Dinov2Config, Dinov2Model

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = Dinov2Model(Dinov2Config(**spec.tiny["config"]))
        return LoadedEncoder(spec=spec, backbone=Dinov3Pooled(model), full_model=model)
    return _load_hub(spec, "DINOv2")


def _load_hub(spec: EncoderSpec, family: str) -> LoadedEncoder:
    """A transformers vision model and its processor (whose preprocessing wins) from the hub or a directory."""
    from transformers import AutoImageProcessor, AutoModel

    try:
        processor = AutoImageProcessor.from_pretrained(spec.model_id)
        model = AutoModel.from_pretrained(spec.model_id)
    except Exception as exc:  # GatedRepoError, LocalEntryNotFoundError, OSError, ...
        gated = "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc)
        action = (
            f"accept the licence on the model page of {spec.model_id} and log in with `hf auth login`"
            if gated
            else "check the network route to the model hub, or accept the licence and log in with `hf auth login`"
        )
        raise EncoderLoadError(
            f"could not load {family} {spec.model_id} ({exc.__class__.__name__}: {_first_line(exc)}). "
            f"To fix: {action}; or download the weights elsewhere and pass the directory with --encoder-weights DIR."
        ) from None
    spec = replace(spec, preprocess=_preprocess_from_processor(processor, spec.preprocess))
    return LoadedEncoder(spec=spec, backbone=Dinov3Pooled(model), full_model=model)


def _preprocess_from_processor(processor: object, default: PreprocessSpec) -> PreprocessSpec:
    """The model's own processor settings win over the registry's defaults."""
    size = getattr(processor, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") or default.input_size
    resample = getattr(processor, "resample", None)
    interpolation = (_PIL_RESAMPLE_NAMES.get(int(resample), default.interpolation) if resample is not None
                     else default.interpolation)
    crop = bool(getattr(processor, "do_center_crop", False))
    resize_size = None
    if crop:  # the graph sees the crop (DINOv2: shortest side to 256, crop 224), not the resize target
        crop_side = (getattr(processor, "crop_size", None) or {}).get("height") or side
        resize_size = int(side) if int(side) != int(crop_side) else None
        side = crop_side
    return PreprocessSpec(
        input_size=int(side),
        mean=tuple(float(v) for v in (getattr(processor, "image_mean", None) or default.mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in (getattr(processor, "image_std", None) or default.std)),  # type: ignore[arg-type]
        resize="shortest_side_center_crop" if crop else "squash",
        interpolation=interpolation,
        resize_size=resize_size,
        crop_offset="floor" if crop else "round",  # transformers' center_crop truncates the offset
    )


_PIL_RESAMPLE_NAMES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


LOADERS: dict[str, Callable[[EncoderSpec], LoadedEncoder]] = {
    "clip": _load_clip,
    "dinov3": _load_dinov3,
    "dinov2": _load_dinov2,
}


def load_encoder(spec: EncoderSpec) -> LoadedEncoder:
    """Build a frozen encoder for a registry entry (tiny twin or real weights)."""
    try:
        loader = LOADERS[spec.encoder_type]
    except KeyError:
        raise EncoderLoadError(
            f"encoder {spec.name} has encoder_type {spec.encoder_type!r}, which has no loader; "
            f"known types: {', '.join(sorted(LOADERS))}"
        ) from None
    loaded = loader(spec)
    for module in (loaded.backbone, loaded.full_model):
        module.eval()
        module.requires_grad_(False)
    return loaded


def clip_text_embeddings(loaded: LoadedEncoder, prompts: list[str]) -> torch.Tensor:
    """(P, D) L2-normalised CLIP text-tower embeddings of ``prompts``, in the image embedding's space."""
    import open_clip

    model = loaded.full_model
    if not has_text_tower(loaded.spec.encoder_type) or not hasattr(model, "encode_text"):
        raise EncoderLoadError(f"encoder {loaded.spec.name} has no text tower; prompts need a CLIP encoder")
    if loaded.spec.is_tiny:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
    else:
        tokenizer = open_clip.get_tokenizer(loaded.spec.model_id)
    with torch.no_grad():
        return model.encode_text(tokenizer(prompts), normalize=True).float()


def encoder_graph(loaded: LoadedEncoder) -> EncoderGraph:
    return EncoderGraph(loaded.backbone, loaded.spec.preprocess).eval()


def fingerprint(module: nn.Module, preprocess: PreprocessSpec) -> str:
    """sha256 over the weights and the preprocessing: two encoders agree only if both agree."""
    digest = hashlib.sha256()
    digest.update(json.dumps(preprocess.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
