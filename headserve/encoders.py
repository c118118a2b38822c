"""The encoder registry: every frozen image encoder headserve knows, as data.

An entry says where the weights come from and how pixels must be prepared for them. Loading code
(``headserve.backbones``) reads these entries; nothing here imports torch, so the client can use the
preprocessing spec without the training stack.

Each encoder family has a tiny, randomly initialised twin of the real architecture (same classes,
small config, fixed seed). Tests and the offline demo use the twins; they are labelled untrained
wherever they are shown.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from headserve.errors import ConfigError, PreprocessSpecError, RegionModeError, UnknownEncoderError

# open_clip's OPENAI_DATASET_MEAN/STD; the LAION-trained CLIP checkpoints use the same values.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# IMAGENET_DEFAULT_MEAN/STD, as in the DINOv3 LVD-1689M processor configs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The DINOv3 SAT-493M (satellite) checkpoints ship their own statistics.
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)

RESIZE_RULES = ("shortest_side_center_crop", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# How the centre crop's offset is rounded when the margin is odd: torchvision's CenterCrop (open_clip)
# rounds half to even, the transformers image processors (DINOv2) truncate.
CROP_OFFSETS = ("round", "floor")
# What training, the report and export say of a head on a tiny twin, so no one reads its figures as a result.
UNTRAINED_NOTE = "untrained encoder (random weights): numbers mean nothing"


@dataclass(frozen=True)
class PreprocessSpec:
    """How a crop becomes the encoder's input; shared verbatim by training, export and the client."""

    input_size: int  # square side in pixels that the encoder graph receives
    mean: tuple[float, float, float]  # per-channel mean on the [0, 1] scale, applied inside the graph
    std: tuple[float, float, float]  # per-channel std on the [0, 1] scale, applied inside the graph
    resize: str  # "shortest_side_center_crop" (CLIP, DINOv2) or "squash" (DINOv3 processors)
    interpolation: str  # PIL resampling filter used for the resize
    # Short side before the centre crop. None resizes straight to input_size (open_clip's
    # Resize(224) + CenterCrop(224)); the DINOv2 processors resize to 256 and crop 224.
    resize_size: int | None = None
    crop_offset: str = "round"  # one of CROP_OFFSETS

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ConfigError(f"resize rule {self.resize!r} is not one of {RESIZE_RULES}").about(
                "resize", self.resize)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}").about(
                "interpolation", self.interpolation)
        if self.input_size < 8:
            raise ConfigError(f"input_size {self.input_size} is too small; encoders need at least 8 pixels").about(
                "input_size", self.input_size)
        if self.crop_offset not in CROP_OFFSETS:
            raise ConfigError(f"crop_offset {self.crop_offset!r} is not one of {CROP_OFFSETS}").about(
                "crop_offset", self.crop_offset)
        if self.resize_size is not None:
            if self.resize != "shortest_side_center_crop":
                raise ConfigError(f"resize_size {self.resize_size} needs the shortest_side_center_crop rule; "
                                  f"{self.resize!r} resizes straight to input_size").about(
                    "resize_size", self.resize_size)
            if self.resize_size < self.input_size:
                raise ConfigError(f"resize_size {self.resize_size} is smaller than input_size {self.input_size}; "
                                  "the centre crop must fit inside the resized image").about(
                    "resize_size", self.resize_size)

    @property
    def short_side(self) -> int:
        """The short side a crop is resized to before the centre crop."""
        return self.resize_size if self.resize_size is not None else self.input_size

    def to_dict(self) -> dict[str, Any]:
        # The fields with defaults came later; left out at their defaults, specs written before they
        # existed (in artifacts, encoder fingerprints and cache keys) keep their exact bytes and hashes.
        data = asdict(self)
        for f in fields(self):
            if f.default is not MISSING and data[f.name] == f.default:
                del data[f.name]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        """Read ``to_dict``'s form; anything else raises ``PreprocessSpecError`` (a ValueError) naming the field.

        A field this version does not know changes how crops are resized; ignoring it would give quietly
        different embeddings, so it is refused, as are missing fields and values of the wrong kind.
        """
        if not isinstance(data, Mapping):
            raise PreprocessSpecError(f"preprocess spec {data!r} is not a mapping of spec fields")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise PreprocessSpecError(f"preprocess spec has fields this headserve does not know: "
                                      f"{', '.join(map(str, unknown))}; upgrade headserve to the version that "
                                      "exported the model")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise PreprocessSpecError(f"preprocess spec lacks the field(s) {', '.join(missing)}")
        optional: dict[str, Any] = {}  # absent fields keep the dataclass defaults
        try:
            if data.get("resize_size") is not None:
                optional["resize_size"] = int(data["resize_size"])
            if "crop_offset" in data:
                optional["crop_offset"] = str(data["crop_offset"])
            return cls(
                input_size=int(data["input_size"]),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                resize=str(data["resize"]),
                interpolation=str(data["interpolation"]),
                **optional,
            )
        except (TypeError, ValueError) as exc:
            raise PreprocessSpecError(f"preprocess spec {dict(data)} does not read: {exc}") from None

    def to_json(self) -> str:
        """The one text form of a spec (ensemble and decoder parameters, fingerprint files, encoder fingerprints).

        Sorted keys with json's default separators: the bytes that exported repositories already hold.
        """
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        """Read ``to_json``'s text; a value that is not a JSON object of spec fields raises
        ``PreprocessSpecError`` (a ValueError) naming it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PreprocessSpecError(f"preprocess spec {text[:80]!r} is not JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise PreprocessSpecError(f"preprocess spec {text[:80]!r} is not a JSON object of spec fields")
        return cls.from_dict(data)


@dataclass(frozen=True)
class EncoderFamily:
    """What every encoder of one family can do, declared once; code asks here instead of comparing names."""

    name: str  # the encoder_type, e.g. "clip"
    text_tower: bool  # the model also embeds text, so its heads may carry a prompt prefilter
    resize: str  # resize rule of the family's own image processors, one of RESIZE_RULES
    interpolation: str  # resampling filter of the family's own image processors, one of INTERPOLATIONS
    # The EncoderSpec field that a local copy of the weights replaces: open_clip takes a checkpoint file
    # as its "pretrained" tag, timm a file or directory in place of its hub id (the architecture stays);
    # transformers loads a directory in place of the hub id.
    weights_field: str
    # Why the family's graph cannot be exported in float16, or "" when it can (the export's parity check
    # then decides per model).
    no_fp16_export: str = ""
    # Why the family's boxes cannot be pooled from its patch grid (`--pooling region`), or "" when they can.
    no_region_pooling: str = ""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ConfigError(f"family {self.name}: resize rule {self.resize!r} is not one of {RESIZE_RULES}").about(
                "resize", self.resize)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"family {self.name}: interpolation {self.interpolation!r} is not one of "
                              f"{INTERPOLATIONS}").about("interpolation", self.interpolation)
        if self.weights_field not in ("pretrained", "model_id"):
            raise ConfigError(f"family {self.name}: weights_field {self.weights_field!r} is not pretrained or "
                              "model_id").about("weights_field", self.weights_field)


FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (
    EncoderFamily("clip", text_tower=True, resize="shortest_side_center_crop", interpolation="bicubic",
                  weights_field="pretrained",
                  no_region_pooling="CLIP trains only its pooled class token against text; its patch tokens are not "
                                    "in that space, and pooled CLIP region features differ markedly from CLIP crop "
                                    "embeddings (RegionCLIP, CLIPSelf), so a head on them would rest on features the "
                                    "model never learned"),
    # The DINOv3 processors squash to the input size; the DINOv2 ones resize the short side and crop.
    EncoderFamily("dinov3", text_tower=False, resize="squash", interpolation="bilinear", weights_field="model_id"),
    EncoderFamily("dinov2", text_tower=False, resize="shortest_side_center_crop", interpolation="bicubic",
                  weights_field="model_id"),
    # DINOv3 weights as timm republishes them (not gated). timm drops the all-zero QKV bias and keeps the
    # RoPE periods in fp32, so its embeddings are not bit-for-bit the transformers ones: another identity.
    # Its pretrained configs resize the short side to 256 and crop 256 (crop_pct 1.0), bicubic.
    EncoderFamily("dinov3-timm", text_tower=False, resize="shortest_side_center_crop", interpolation="bicubic",
                  weights_field="pretrained",
                  no_region_pooling="headserve takes region patch grids from the transformers DINOv3 and DINOv2 "
                                    "models (CLS, register and patch tokens in a known order); timm's build is not "
                                    "wired for it; use a dinov3: encoder"),
    # V-JEPA 2 video encoders embedding one image: the video processor resizes the short side to
    # crop * 256 / 224 and centre-crops, bilinear.
    EncoderFamily("vjepa2", text_tower=False, resize="shortest_side_center_crop", interpolation="bilinear",
                  weights_field="model_id",
                  no_fp16_export="its 3D RoPE builds token positions with arange in the compute dtype, and "
                                 "ONNX's Range operator has no float16",
                  no_region_pooling="it encodes an image as a video tubelet at a fixed size and has no CLS or "
                                    "register layout to take a patch grid from; use a dinov3: or dinov2: encoder"),
)}


def get_family(encoder_type: str) -> EncoderFamily:
    """The family of an encoder_type, with an error that lists the known ones."""
    try:
        return FAMILIES[encoder_type]
    except KeyError:
        raise UnknownEncoderError(f"unknown encoder family {encoder_type!r}; known families are: "
                                  f"{', '.join(sorted(FAMILIES))}") from None


def require_export_precision(spec: "EncoderSpec", precision: str) -> None:
    """Refuse, before any work, an export precision the encoder's family cannot be exported in."""
    reason = spec.family.no_fp16_export if precision == "fp16" else ""
    if reason:
        raise ConfigError(f"{spec.name} cannot be exported with `precision` fp16: {reason}. "
                          "Export it with `precision` fp32")


def require_region_pooling(spec: "EncoderSpec") -> None:
    """Refuse, before any work, region pooling on an encoder whose family cannot give it (RegionModeError)."""
    reason = spec.family.no_region_pooling
    if reason:
        supported = ", ".join(sorted(f.name for f in FAMILIES.values() if not f.no_region_pooling))
        raise RegionModeError(f"`pooling` region is not available for {spec.name} (family {spec.encoder_type}): "
                              f"{reason}. Use `pooling` crop, or an encoder of a family that pools regions "
                              f"({supported})").about("pooling", "region")


def has_text_tower(encoder_type: str) -> bool:
    """Whether heads on this family may get a prompt prefilter; an unknown family (a newer server's) has none."""
    family = FAMILIES.get(encoder_type)
    return family is not None and family.text_tower


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder."""

    name: str  # registry key, "<encoder_type>:<short name>"
    encoder_type: str  # a FAMILIES key ("clip", "dinov3", "dinov2", "dinov3-timm", "vjepa2"): selects the loader
    # open_clip architecture name; timm model name with its pretrained tag; or Hugging Face hub id / local directory
    model_id: str
    embedding_dim: int  # width of the L2-normalised embedding
    preprocess: PreprocessSpec
    # open_clip pretrained tag (or checkpoint file); timm hub id (or local file / directory); None for
    # transformers models, whose model_id says where the weights are
    pretrained: str | None = None
    tiny: Mapping[str, Any] | None = None  # config of a randomly initialised twin; None for real weights
    description: str = ""

    @property
    def is_tiny(self) -> bool:
        return self.tiny is not None

    @property
    def family(self) -> EncoderFamily:
        return get_family(self.encoder_type)

    @property
    def display_name(self) -> str:
        return f"{self.name} (untrained tiny twin, random weights)" if self.is_tiny else self.name

    def with_weights(self, source: str) -> "EncoderSpec":
        """The same encoder loaded from a local directory (DINOv3) or checkpoint file (CLIP)."""
        if self.is_tiny:
            raise UnknownEncoderError(f"{self.name} is a randomly initialised twin; it takes no weights ({source!r})")
        if Path(source).exists():  # recorded in meta.json: absolute, so export finds it from any directory
            source = str(Path(source).resolve())
        if self.family.weights_field == "pretrained":
            return replace(self, pretrained=source)
        return replace(self, model_id=source)


def _family_preprocess(encoder_type: str, size: int, mean: tuple[float, float, float],
                       std: tuple[float, float, float], **rest: Any) -> PreprocessSpec:
    """A spec that resizes as the family's own processors do."""
    family = FAMILIES[encoder_type]
    return PreprocessSpec(size, mean, std, family.resize, family.interpolation, **rest)


def _clip(name: str, arch: str, tag: str, dim: int, size: int = 224) -> EncoderSpec:
    return EncoderSpec(
        name=f"clip:{name}",
        encoder_type="clip",
        model_id=arch,
        pretrained=tag,
        embedding_dim=dim,
        preprocess=_family_preprocess("clip", size, CLIP_MEAN, CLIP_STD),
        description=f"open_clip {arch} ({tag}), image tower",
    )


def _dinov3(name: str, hub_id: str, dim: int, mean: tuple[float, float, float] = IMAGENET_MEAN,
            std: tuple[float, float, float] = IMAGENET_STD) -> EncoderSpec:
    return EncoderSpec(
        name=f"dinov3:{name}",
        encoder_type="dinov3",
        model_id=hub_id,
        embedding_dim=dim,
        preprocess=_family_preprocess("dinov3", 224, mean, std),
        description=f"DINOv3 {hub_id} through transformers AutoModel, pooler_output",
    )


def _dinov3_timm(name: str, timm_name: str, dim: int, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> EncoderSpec:
    # The registry's spec is the pretrained config's (256 px, crop_pct 1.0, bicubic); the loader reads the
    # model's own config again and that wins.
    return EncoderSpec(
        name=f"dinov3-timm:{name}",
        encoder_type="dinov3-timm",
        model_id=timm_name,
        pretrained=f"timm/{timm_name}",
        embedding_dim=dim,
        preprocess=_family_preprocess("dinov3-timm", 256, mean, std),
        description=f"DINOv3 timm {timm_name} (public weights), CLS token after the final norm",
    )


def _vjepa2(name: str, hub_id: str, dim: int, size: int = 256) -> EncoderSpec:
    # The video processor's short side is int(crop * 256 / 224): 292 for 256 px, 438 for 384 px; its centre
    # crop truncates the offset, as the transformers image processors do.
    return EncoderSpec(
        name=f"vjepa2:{name}",
        encoder_type="vjepa2",
        model_id=hub_id,
        embedding_dim=dim,
        preprocess=_family_preprocess("vjepa2", size, IMAGENET_MEAN, IMAGENET_STD, resize_size=int(size * 256 / 224),
                                      crop_offset="floor"),
        description=f"V-JEPA 2 {hub_id} through transformers VJEPA2Model, one frame, mean of the last layer's tokens",
    )


def _dinov2(name: str, hub_id: str, dim: int) -> EncoderSpec:
    # As the DINOv2 processors do: shortest side to 256, centre crop 224 at a truncated offset,
    # bicubic, ImageNet statistics.
    return EncoderSpec(
        name=f"dinov2:{name}",
        encoder_type="dinov2",
        model_id=hub_id,
        embedding_dim=dim,
        preprocess=_family_preprocess("dinov2", 224, IMAGENET_MEAN, IMAGENET_STD, resize_size=256, crop_offset="floor"),
        description=f"DINOv2 {hub_id} through transformers AutoModel, pooler_output (public weights)",
    )


_TINY_SIZE = 32
_ENTRIES: tuple[EncoderSpec, ...] = (
    _clip("ViT-B-32", "ViT-B-32", "laion2b_s34b_b79k", 512),
    _clip("ViT-B-16", "ViT-B-16", "laion2b_s34b_b88k", 512),
    _clip("ViT-L-14", "ViT-L-14", "laion2b_s32b_b82k", 768),
    _dinov3("vits16", "facebook/dinov3-vits16-pretrain-lvd1689m", 384),
    _dinov3("vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m", 768),
    _dinov3("vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m", 1024),
    _dinov3("vitl16-sat", "facebook/dinov3-vitl16-pretrain-sat493m", 1024, SAT_MEAN, SAT_STD),
    _dinov2("vits14", "facebook/dinov2-small", 384),
    _dinov2("vitb14", "facebook/dinov2-base", 768),
    _dinov2("vitl14", "facebook/dinov2-large", 1024),
    _dinov3_timm("vits16", "vit_small_patch16_dinov3.lvd1689m", 384),
    _dinov3_timm("vits16plus", "vit_small_plus_patch16_dinov3.lvd1689m", 384),
    _dinov3_timm("vitb16", "vit_base_patch16_dinov3.lvd1689m", 768),
    _dinov3_timm("vitl16", "vit_large_patch16_dinov3.lvd1689m", 1024),
    _dinov3_timm("vitl16-sat", "vit_large_patch16_dinov3.sat493m", 1024, SAT_MEAN, SAT_STD),
    _dinov3_timm("vith16plus", "vit_huge_plus_patch16_dinov3.lvd1689m", 1280),
    _dinov3_timm("vit7b16", "vit_7b_patch16_dinov3.lvd1689m", 4096),
    _dinov3_timm("vit7b16-sat", "vit_7b_patch16_dinov3.sat493m", 4096, SAT_MEAN, SAT_STD),
    _vjepa2("vitl", "facebook/vjepa2-vitl-fpc64-256", 1024),
    _vjepa2("vith", "facebook/vjepa2-vith-fpc64-256", 1280),
    _vjepa2("vitg", "facebook/vjepa2-vitg-fpc64-256", 1408),
    _vjepa2("vitg-384", "facebook/vjepa2-vitg-fpc64-384", 1408, size=384),
    # Tiny twins: the real classes (open_clip.CLIP, transformers DINOv3ViTModel, Dinov2Model, timm's Eva as
    # vit_small_patch16_dinov3, transformers VJEPA2Model) at a small config.
    EncoderSpec(
        name="clip:tiny",
        encoder_type="clip",
        model_id="tiny-ViT",
        embedding_dim=32,
        preprocess=_family_preprocess("clip", _TINY_SIZE, CLIP_MEAN, CLIP_STD),
        tiny={
            "seed": 0,
            "vision": {"image_size": _TINY_SIZE, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
            "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 2},
        },
        description="open_clip CLIP, 2-layer ViT, random weights",
    ),
    EncoderSpec(
        name="dinov3:tiny",
        encoder_type="dinov3",
        model_id="tiny-dinov3",
        embedding_dim=32,
        preprocess=_family_preprocess("dinov3", _TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD),
        tiny={
            "seed": 0,
            "config": {
                "image_size": _TINY_SIZE,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_register_tokens": 4,
            },
        },
        description="transformers DINOv3ViTModel, 2 layers, random weights",
    ),
    EncoderSpec(
        name="dinov2:tiny",
        encoder_type="dinov2",
        model_id="tiny-dinov2",
        embedding_dim=32,
        # the real processors' 256 -> 224 ratio at the twin's size, so the resize-then-crop path is tested
        preprocess=_family_preprocess("dinov2", 28, IMAGENET_MEAN, IMAGENET_STD, resize_size=32, crop_offset="floor"),
        tiny={
            "seed": 0,
            "config": {
                "image_size": 28,
                "patch_size": 14,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
            },
        },
        description="transformers Dinov2Model, 2 layers, random weights",
    ),
    EncoderSpec(
        name="dinov3-timm:tiny",
        encoder_type="dinov3-timm",
        model_id="vit_small_patch16_dinov3",  # the architecture; its keyword arguments below shrink it
        embedding_dim=32,
        preprocess=_family_preprocess("dinov3-timm", _TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD),
        tiny={
            "seed": 0,
            # init_values: layer scale starts at 1 (timm's DINOv3 starts it at 1e-5, for training), as the
            # transformers twin's layerscale_value does; at 1e-5 the random blocks add almost nothing and the
            # CLS embedding is the same for every image to 1e-7, which no head can be trained on.
            "config": {"img_size": _TINY_SIZE, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                       "init_values": 1.0},
        },
        description="timm vit_small_patch16_dinov3 (Eva), 2 layers, random weights",
    ),
    EncoderSpec(
        name="vjepa2:tiny",
        encoder_type="vjepa2",
        model_id="tiny-vjepa2",
        embedding_dim=32,
        # the real processors' 256 / 292 ratio at the twin's size, so the resize-then-crop path is tested
        preprocess=_family_preprocess("vjepa2", _TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD,
                                      resize_size=int(_TINY_SIZE * 256 / 224), crop_offset="floor"),
        tiny={
            "seed": 0,
            "config": {
                "crop_size": _TINY_SIZE,
                "patch_size": 8,
                "frames_per_clip": 2,
                "tubelet_size": 2,
                # 2 heads of 16: RoPE rotates 4 dims each of time, height and width and leaves 4, as the
                # real heads of 64 rotate 20 each and leave 4
                "hidden_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 2,
                "mlp_ratio": 2.0,
                "pred_hidden_size": 16,
                "pred_num_attention_heads": 2,
                "pred_num_hidden_layers": 1,
            },
        },
        description="transformers VJEPA2Model, 2 layers, random weights",
    ),
)

REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in _ENTRIES}
DEFAULT_ENCODER_TYPE = "clip"  # what a head means when its metadata names no encoder_type


def get_encoder(name: str) -> EncoderSpec:
    """Look an encoder up by registry name, with an error that lists what exists."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; registered encoders are: {known}. "
            "Use one of these names (e.g. dinov3:vitb16); local weights go with a registered name "
            "(EncoderSpec.with_weights)."
        ) from None


def tiny_twin(encoder_type: str) -> EncoderSpec | None:
    """The randomly initialised twin of a family, or None when the family has none."""
    return next((s for s in REGISTRY.values() if s.encoder_type == encoder_type and s.is_tiny), None)


def encoder_types() -> tuple[str, ...]:
    return tuple(sorted({s.encoder_type for s in REGISTRY.values()}))


__all__ = [
    "EncoderFamily",
    "EncoderSpec",
    "FAMILIES",
    "get_family",
    "has_text_tower",
    "require_export_precision",
    "require_region_pooling",
    "PreprocessSpec",
    "REGISTRY",
    "DEFAULT_ENCODER_TYPE",
    "get_encoder",
    "tiny_twin",
    "encoder_types",
]
