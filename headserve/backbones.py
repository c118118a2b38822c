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
import math
import socket
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from headserve.encoders import INTERPOLATIONS, EncoderSpec, PreprocessSpec, has_text_tower, require_region_pooling
from headserve.errors import EncoderLoadError, RegionModeError
from headserve.regions import RegionSpec, default_resolution


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


class DinoPooled(nn.Module):
    """transformers DINOv3 (and DINOv2): ``pooler_output``, falling back to the CLS token of ``last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


class Vjepa2MeanPooled(nn.Module):
    """transformers V-JEPA 2 on one image: the mean of the last layer's tokens.

    The image goes in as a one-frame clip; VJEPA2Embeddings repeats it to the tubelet size (2 frames),
    so one image gives one tubelet of (S / 16)^2 tokens. The model has no CLS token and no pooled output;
    its attentive pooler belongs to the task heads trained on top of it (VJEPA2ForVideoClassification), so
    a frozen, task-free embedding averages the tokens, which are already layer-normalised. The predictor
    is skipped: it serves the training objective, not the representation.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        out = self.model(pixel_values_videos=x.unsqueeze(1), skip_predictor=True)  # (B, 1, 3, S, S) in
        return out.last_hidden_state.mean(dim=1)  # (B, N, D) -> (B, D)


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
# Region mode: one pass over a letterboxed image, every box pooled from the patch grid (headserve.regions).


class DinoPatchGrid(nn.Module):
    """transformers DINOv3 / DINOv2: the patch tokens of ``last_hidden_state`` as a grid.

    ``last_hidden_state`` is the final layer norm's output: the CLS token, then ``num_register_tokens``
    register tokens (DINOv3; DINOv2 has none), then the patches row by row.
    """

    def __init__(self, model: nn.Module, patch_size: int, prefix_tokens: int) -> None:
        super().__init__()
        self.model = model
        self.patch_size = patch_size
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, R, R) -> (B, G, G, D)
        tokens = self.model(pixel_values=x).last_hidden_state  # (B, prefix + G * G, D)
        grid_h, grid_w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        patches = tokens[:, self.prefix_tokens:]  # (B, G * G, D)
        return patches.reshape(patches.shape[0], grid_h, grid_w, patches.shape[-1])


def _dino_grid(loaded: LoadedEncoder) -> DinoPatchGrid:
    config = loaded.full_model.config
    return DinoPatchGrid(loaded.full_model, int(config.patch_size), 1 + int(getattr(config, "num_register_tokens", 0)))


# The families whose patch grid region mode reads, by encoder_type; the others say why not in their
# EncoderFamily.no_region_pooling (a unit test keeps the two in step).
PATCH_GRIDS: dict[str, Callable[[LoadedEncoder], nn.Module]] = {"dinov3": _dino_grid, "dinov2": _dino_grid}


def region_spec_for(loaded: LoadedEncoder, resolution: int | None = None) -> RegionSpec:
    """The region spec of a loaded encoder: its own patch size, and ``resolution`` (default: twice its crop
    side in whole patches, 448 for 224 px encoders). An encoder whose family has no patch grid is refused."""
    require_region_pooling(loaded.spec)
    patch = int(loaded.full_model.config.patch_size)
    return RegionSpec(resolution=resolution or default_resolution(loaded.spec.preprocess.input_size, patch),
                      patch_size=patch)


def patch_weights(boxes: torch.Tensor, resolution: int, patch_size: int) -> torch.Tensor:
    """(K, 4) frame-pixel boxes -> (K, G * G) overlap area of each box with each patch (row-major), in pixels².

    Boxes are clipped to the frame first. Separable: the x overlap with each column times the y overlap
    with each row, so the graph is a few element-wise ops and one outer product.
    """
    grid = resolution // patch_size
    lo = torch.arange(grid, dtype=boxes.dtype, device=boxes.device) * patch_size  # (G,) patch starts
    hi = lo + patch_size
    b = boxes.clamp(0.0, float(resolution))
    ox = (torch.minimum(b[:, 2:3], hi) - torch.maximum(b[:, 0:1], lo)).clamp(min=0.0)  # (K, G) columns
    oy = (torch.minimum(b[:, 3:4], hi) - torch.maximum(b[:, 1:2], lo)).clamp(min=0.0)  # (K, G) rows
    return (oy.unsqueeze(2) * ox.unsqueeze(1)).reshape(boxes.shape[0], grid * grid)  # (K, G * G)


class RegionEncoderGraph(nn.Module):
    """uint8 (1, R, R, 3) letterboxed image + (K, 4) frame-pixel boxes -> (K, D) L2-normalised box embeddings.

    One backbone pass, then each box's masked mean over the patch tokens it covers (headserve.regions
    explains the choice; ``reference_pool`` is the plain numpy version). Preprocessing lives in the graph
    as in ``EncoderGraph``. A box with no area inside the frame gets NaN (0 / 0): callers check boxes
    first (``check_boxes``), and a NaN cannot pass for an answer the way a zero vector could.
    """

    def __init__(self, grid: nn.Module, preprocess: PreprocessSpec, region: RegionSpec) -> None:
        super().__init__()
        self.grid = grid
        self.region = region
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, R, R, 3) uint8 -> (B, G, G, D)
        x = pixels.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0  # (B, 3, R, R)
        return self.grid((x - self.mean) / self.std)

    def pool(self, tokens: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:  # (G, G, D), (K, 4) -> (K, D)
        weights = patch_weights(boxes.float(), self.region.resolution, self.region.patch_size)  # (K, G * G)
        flat = tokens.reshape(-1, tokens.shape[-1]).float()  # (G * G, D)
        pooled = (weights @ flat) / weights.sum(dim=1, keepdim=True)  # (K, D); 0 / 0 = NaN for an empty box
        return F.normalize(pooled, dim=-1)

    def forward(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:  # (1, R, R, 3), (K, 4) -> (K, D)
        return self.pool(self.tokens(pixels)[0], boxes)


def region_graph(loaded: LoadedEncoder, region: RegionSpec) -> RegionEncoderGraph:
    """The region encoder of a loaded encoder; its family must have a patch grid, of ``region``'s patch size."""
    require_region_pooling(loaded.spec)
    build = PATCH_GRIDS.get(loaded.spec.encoder_type)
    if build is None:
        raise RegionModeError(f"{loaded.spec.name}: family {loaded.spec.encoder_type} declares region pooling but "
                              "headserve has no patch grid for it; use `pooling` crop").about("pooling", "region")
    grid = build(loaded)
    patch = getattr(grid, "patch_size", region.patch_size)
    if patch != region.patch_size:
        raise RegionModeError(f"region spec patch size {region.patch_size} is not {loaded.spec.name}'s patch size "
                              f"{patch}; build the spec with region_spec_for").about("patch_size", region.patch_size)
    return RegionEncoderGraph(grid, loaded.spec.preprocess, region).eval()


# ---------------------------------------------------------------------------------------------
# The model hub's route. huggingface_hub retries a failed connection five times with backoff (about
# 25 s per file, several files per model); a machine with no route to the hub would wait minutes for
# the error that says so. One short probe first: when the hub does not answer, the load runs offline,
# so cached weights load at once and missing ones fail in seconds.

HUB_PROBE_TIMEOUT_S = 3.0  # a TCP connect to the hub's endpoint; a reachable hub answers in well under this


def _hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``endpoint`` (huggingface_hub's ENDPOINT) opens within ``timeout``."""
    url = urllib.parse.urlsplit(endpoint)
    if not url.hostname:
        return True  # not a URL this probe understands: leave the judgement to huggingface_hub
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_route() -> Iterator[None]:
    """Load inside this: offline (huggingface_hub's own switch, read at call time) when the hub cannot be reached.

    With a proxy configured the direct probe proves nothing, so the library is left to find its way.
    Loading is single-threaded (one encoder per command), so flipping the module flag is not raced.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or urllib.request.getproxies() or _hub_reachable(constants.ENDPOINT):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


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
            with hub_route():
                model, _, _ = open_clip.create_model_and_transforms(spec.model_id, pretrained=spec.pretrained)
        except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors alike
            raise EncoderLoadError(
                f"could not load CLIP {spec.model_id} with pretrained={spec.pretrained!r} "
                f"({exc.__class__.__name__}: {_first_line(exc)}). This machine may have no route to the model "
                "hub: download the checkpoint elsewhere and pass it with `encoder_weights` FILE."
            ) from None
    return LoadedEncoder(spec=spec, backbone=ClipImageTower(model), full_model=model)


def _load_dinov3(spec: EncoderSpec) -> LoadedEncoder:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = DINOv3ViTModel(DINOv3ViTConfig(**spec.tiny["config"]))
        return LoadedEncoder(spec=spec, backbone=DinoPooled(model), full_model=model)
    return _load_hub(spec, "DINOv3")


def _load_dinov2(spec: EncoderSpec) -> LoadedEncoder:
    """DINOv2 (public weights, no licence gate): the fallback when DINOv3 cannot be downloaded."""
    from transformers import Dinov2Config, Dinov2Model

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = Dinov2Model(Dinov2Config(**spec.tiny["config"]))
        return LoadedEncoder(spec=spec, backbone=DinoPooled(model), full_model=model)
    return _load_hub(spec, "DINOv2")


def _load_vjepa2(spec: EncoderSpec) -> LoadedEncoder:
    """V-JEPA 2 (transformers VJEPA2Model): one image as a one-frame clip, tokens mean-pooled."""
    from transformers import AutoVideoProcessor, VJEPA2Config, VJEPA2Model

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = VJEPA2Model(VJEPA2Config(**spec.tiny["config"]))
        return LoadedEncoder(spec=spec, backbone=Vjepa2MeanPooled(model), full_model=model)
    return _load_hub(spec, "V-JEPA 2", processor_class=AutoVideoProcessor, wrap=Vjepa2MeanPooled)


def _load_hub(spec: EncoderSpec, family: str, processor_class: Any = None,
              wrap: Callable[[nn.Module], nn.Module] = DinoPooled) -> LoadedEncoder:
    """A transformers vision model and its processor (whose preprocessing wins) from the hub or a directory.

    ``processor_class`` defaults to ``AutoImageProcessor``; video models (V-JEPA 2) ship a video processor.
    """
    from transformers import AutoImageProcessor, AutoModel

    try:
        with hub_route():
            processor = (processor_class or AutoImageProcessor).from_pretrained(spec.model_id)
            model = AutoModel.from_pretrained(spec.model_id)
    except Exception as exc:  # GatedRepoError, LocalEntryNotFoundError, OSError, ...
        raise EncoderLoadError(_hub_failure(family, spec.model_id, exc, "`encoder_weights` DIR")) from None
    spec = replace(spec, preprocess=_preprocess_from_processor(processor, spec.preprocess))
    return LoadedEncoder(spec=spec, backbone=wrap(model), full_model=model)


def _hub_failure(family: str, source: str, exc: BaseException, local: str) -> str:
    """The one message for weights the hub would not give: the model, the cause, and both ways out."""
    gated = "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc)
    action = (
        f"accept the licence on the model page of {source} and log in with `hf auth login`"
        if gated
        else "check the network route to the model hub, or accept the licence and log in with `hf auth login`"
    )
    return (f"could not load {family} {source} ({exc.__class__.__name__}: {_first_line(exc)}). "
            f"To fix: {action}; or download the weights elsewhere and pass them with {local}.")


# timm's DINOv3 pools by averaging the patch tokens unless told otherwise; upstream DINOv3 (and the
# transformers family's pooler_output) takes the CLS token after the final norm, and so does headserve.
# num_classes=0 leaves out the classifier, so the model's output is the pooled feature.
TIMM_OPTIONS: Mapping[str, Any] = {"num_classes": 0, "global_pool": "token"}
_TIMM_LOCAL = "`encoder_weights` FILE_OR_DIR (a .safetensors/.pth file, or the directory " \
              "`hf download timm/<model> --local-dir DIR` writes)"


def _load_dinov3_timm(spec: EncoderSpec) -> LoadedEncoder:
    """DINOv3 through timm: the hub id in ``pretrained``, or a local file or directory in its place.

    The model's own pretrained config (input size, mean, std, interpolation, crop) replaces the registry's.
    """
    import timm

    if spec.tiny is not None:
        torch.manual_seed(int(spec.tiny["seed"]))
        model = timm.create_model(spec.model_id, pretrained=False, **{**TIMM_OPTIONS, **spec.tiny["config"]})
        return LoadedEncoder(spec=spec, backbone=model, full_model=model)
    source = spec.pretrained or f"timm/{spec.model_id}"
    path = Path(source)
    try:
        if path.is_dir():
            model = _timm_from_directory(spec, path)
        elif path.is_file():  # timm's own way to point a registered model at a local checkpoint
            model = timm.create_model(spec.model_id, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                      **TIMM_OPTIONS)
        elif _is_hub_id(source):
            with hub_route():
                model = timm.create_model(spec.model_id, pretrained=True, pretrained_cfg_overlay={"hf_hub_id": source},
                                          **TIMM_OPTIONS)
        else:
            raise EncoderLoadError(f"DINOv3 (timm) weights {source} do not exist; pass {_TIMM_LOCAL}")
    except EncoderLoadError:
        raise
    except Exception as exc:  # huggingface_hub's offline/gated errors, OSError, a state dict that does not fit
        if path.exists():
            raise EncoderLoadError(
                f"could not load DINOv3 (timm) {spec.model_id} from {source} ({exc.__class__.__name__}: "
                f"{_first_line(exc)}); the weights must be those of {spec.model_id}. Pass {_TIMM_LOCAL}"
            ) from None
        raise EncoderLoadError(_hub_failure("DINOv3 (timm)", source, exc, _TIMM_LOCAL)) from None
    cfg = timm.data.resolve_model_data_config(model)
    spec = replace(spec, preprocess=_preprocess_from_timm(cfg, f"{spec.model_id} ({source})"))
    return LoadedEncoder(spec=spec, backbone=model, full_model=model)


def _is_hub_id(source: str) -> bool:
    """``owner/name`` as the hub spells repositories; anything else that does not exist is a missing path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and "\\" not in source


def _timm_from_directory(spec: EncoderSpec, directory: Path) -> nn.Module:
    """A timm model directory (config.json + weights); its architecture must be the registry entry's."""
    import timm

    config = directory / "config.json"
    if not config.is_file():
        raise EncoderLoadError(f"{directory} has no config.json, so it is not a timm model directory; pass "
                               f"{_TIMM_LOCAL}")
    try:
        architecture = json.loads(config.read_text()).get("architecture")
    except (ValueError, AttributeError, OSError) as exc:
        raise EncoderLoadError(f"{config} is not a timm model config ({exc}); pass {_TIMM_LOCAL}") from None
    expected = spec.model_id.split(".", 1)[0]
    if architecture != expected:
        raise EncoderLoadError(f"{directory} holds timm architecture {architecture!r} (its config.json), but "
                               f"{spec.name} is {expected}; pass the weights of {spec.model_id} or pick the "
                               "registry name of that architecture")
    return timm.create_model(f"local-dir:{directory}", pretrained=True, **TIMM_OPTIONS)


def _preprocess_from_timm(cfg: Mapping[str, Any], where: str) -> PreprocessSpec:
    """timm's eval transform as a spec: short side to floor(size / crop_pct), centre crop (torchvision's rounding).

    A transform headserve does not mirror (a non-square input, the "border" crop mode, an interpolation
    PIL does not name alike) is refused: serving it approximately would change every embedding quietly.
    """
    _, height, width = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT when a config names none
    mode = cfg.get("crop_mode") or "center"
    interpolation = str(cfg.get("interpolation", ""))
    scale = math.floor(height / crop_pct)
    if height != width or interpolation not in INTERPOLATIONS or mode not in ("center", "squash") or (
            mode == "squash" and scale != height):
        raise EncoderLoadError(
            f"{where}: timm's eval transform (input {height}x{width}, crop_mode {mode!r}, crop_pct {crop_pct}, "
            f"interpolation {interpolation!r}) is not one headserve can mirror on the client; square inputs with "
            "crop_mode center (or squash at crop_pct 1.0) and bicubic/bilinear/nearest are")
    return PreprocessSpec(
        input_size=int(height),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        resize="squash" if mode == "squash" else "shortest_side_center_crop",
        interpolation=interpolation,
        resize_size=scale if mode == "center" and scale != height else None,
        crop_offset="round",  # torchvision's CenterCrop
    )


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
    "dinov3-timm": _load_dinov3_timm,
    "vjepa2": _load_vjepa2,
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


def fingerprint(module: nn.Module, preprocess: PreprocessSpec, region: RegionSpec | None = None) -> str:
    """sha256 over the weights, the preprocessing and (region mode) the region spec: two encoders agree only
    if all agree. Crop encoders hash what they always did, so their recorded fingerprints stay valid."""
    digest = hashlib.sha256()
    digest.update(json.dumps(preprocess.to_dict(), sort_keys=True).encode())
    if region is not None:
        digest.update(b"region:" + region.to_json().encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
