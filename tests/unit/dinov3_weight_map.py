"""The same DINOv3 weights in transformers' DINOv3ViTModel and timm's vit_*_patch16_dinov3, side by side.

Used by the unit tests (tiny configs) and run as a script for the real sizes with random weights:

    .venv/bin/python tests/unit/dinov3_weight_map.py vits16 vitb16

timm's non-"qkvb" DINOv3 models have no QKV bias (the released distilled checkpoints' biases are all
zero), so the transformers model's query and value biases are zeroed before the weights are mapped.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

# transformers DINOv3ViTConfig sizes and the timm architecture of the same network.
SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "vits16": ("vit_small_patch16_dinov3",
               {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6}),
    "vitb16": ("vit_base_patch16_dinov3",
               {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}),
}


def hf_to_timm(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A DINOv3ViTModel state dict under timm Eva's names (q, k, v fused into one qkv weight)."""
    out = {"cls_token": state["embeddings.cls_token"], "reg_token": state["embeddings.register_tokens"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.bias"],
           "norm.weight": state["norm.weight"], "norm.bias": state["norm.bias"]}
    for i in range(layers):
        a, b = f"model.layer.{i}.", f"blocks.{i}."
        out[b + "attn.qkv.weight"] = torch.cat([state[a + f"attention.{x}_proj.weight"] for x in "qkv"])
        out[b + "attn.proj.weight"] = state[a + "attention.o_proj.weight"]
        out[b + "attn.proj.bias"] = state[a + "attention.o_proj.bias"]
        for norm in ("norm1", "norm2"):
            out[b + norm + ".weight"], out[b + norm + ".bias"] = state[a + norm + ".weight"], state[a + norm + ".bias"]
        out[b + "gamma_1"], out[b + "gamma_2"] = state[a + "layer_scale1.lambda1"], state[a + "layer_scale2.lambda1"]
        out[b + "mlp.fc1.weight"], out[b + "mlp.fc1.bias"] = state[a + "mlp.up_proj.weight"], state[a + "mlp.up_proj.bias"]
        out[b + "mlp.fc2.weight"] = state[a + "mlp.down_proj.weight"]
        out[b + "mlp.fc2.bias"] = state[a + "mlp.down_proj.bias"]
    return out


def twin_pair(arch: str, sizes: dict[str, int], image_size: int, patch_size: int = 16,
              seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(transformers DINOv3ViTModel, timm model) holding the same random weights; both in eval mode."""
    import timm
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    from headserve.backbones import TIMM_OPTIONS

    torch.manual_seed(seed)
    hf = DINOv3ViTModel(DINOv3ViTConfig(image_size=image_size, patch_size=patch_size, num_register_tokens=4,
                                        **sizes)).eval()
    with torch.no_grad():
        for layer in hf.model.layer:
            layer.attention.q_proj.bias.zero_()
            layer.attention.v_proj.bias.zero_()
    tm = timm.create_model(arch, pretrained=False, img_size=image_size, patch_size=patch_size,
                           embed_dim=sizes["hidden_size"], depth=sizes["num_hidden_layers"],
                           num_heads=sizes["num_attention_heads"],
                           mlp_ratio=sizes["intermediate_size"] / sizes["hidden_size"], **TIMM_OPTIONS).eval()
    tm.load_state_dict(hf_to_timm(hf.state_dict(), sizes["num_hidden_layers"]), strict=True)
    return hf, tm


def cls_embeddings(hf: nn.Module, tm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' L2-normalised CLS embeddings (transformers' pooler_output, timm's token pool) of ``x``."""
    with torch.no_grad():
        return F.normalize(hf(pixel_values=x).pooler_output, dim=-1), F.normalize(tm(x), dim=-1)


def main(names: list[str]) -> None:
    from PIL import Image
    from skimage import data

    from headserve.backbones import EncoderGraph
    from headserve.encoders import get_encoder
    from headserve.preprocess import prepare_batch

    torch.set_num_threads(1)
    photos = [Image.fromarray(a) for a in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket())]
    crops = [p.crop((0, 0, int(p.width * f), p.height)) for p in photos for f in (1.0, 0.6)]
    for name in names:
        arch, sizes = SIZES[name]
        hf, tm = twin_pair(arch, sizes, 224)
        x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        a, b = cls_embeddings(hf, tm, x)
        print(f"{name}, same weights, same float input: max |diff| {float((a - b).abs().max()):.1e}, "
              f"min cosine {float((a * b).sum(-1).min()):.8f}")
        # end to end on photographs, each family's own preprocessing through headserve's encoder graphs
        pooled = _Pooled(hf)
        hs, ts = get_encoder(f"dinov3:{name}").preprocess, get_encoder(f"dinov3-timm:{name}").preprocess
        with torch.no_grad():
            ea = EncoderGraph(pooled, hs)(torch.from_numpy(prepare_batch(crops, hs)))
            eb = EncoderGraph(tm, ts)(torch.from_numpy(prepare_batch(crops, ts)))
        cos = (ea * eb).sum(-1)
        print(f"{name}, same weights, {len(crops)} photo crops, each family's preprocessing: cosine min "
              f"{float(cos.min()):.4f}, median {float(cos.median()):.4f}")


class _Pooled(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        return self.model(pixel_values=x).pooler_output


if __name__ == "__main__":
    main(sys.argv[1:] or ["vits16"])
