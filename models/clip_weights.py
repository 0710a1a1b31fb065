"""CLIP image-tower weights from the two public namings, in OpenAI's names (``visual.*``).

* OpenAI (``clip.load``'s state_dict) and open_clip's own VisionTransformer share one naming:
  ``visual.conv1.weight``, ``visual.class_embedding``, ``visual.positional_embedding``,
  ``visual.ln_pre.*``, ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post.*``,
  ``visual.proj``. open_clip's training checkpoints wrap it in ``state_dict`` with ``module.``
  prefixes (models.checkpoint unwraps both). A visual-only file without the ``visual.``
  prefix is accepted too.
* open_clip's timm trunk (``visual.trunk.*``: cls_token, pos_embed, patch_embed.proj,
  norm_pre, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, and the
  projection as ``visual.head.proj.weight`` or ``visual.trunk.head.weight``) is renamed.

The text tower's keys (and logit_scale) are dropped: FineCLIPER stores class embeddings. The
MLP activation is not in the weights: OpenAI's ViT-B/16 uses QuickGELU, open_clip's
own-trained ``ViT-B-16`` GELU (config ``mlp_activation``).
"""

from __future__ import annotations

import re

import torch

from models.checkpoint import CheckpointError

PREFIX = "visual."
NAMINGS = ("openai", "open_clip_timm")
HEAD_DIM = 64  # every CLIP ViT: B/16 768 → 12 heads, L/14 1024 → 16
_TIMM_BLOCK = {
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias", "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias", "attn.proj.weight": "attn.out_proj.weight",
    "attn.proj.bias": "attn.out_proj.bias", "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias", "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}  # fmt: skip
_TIMM_TOP = {
    "patch_embed.proj.weight": "conv1.weight", "norm_pre.weight": "ln_pre.weight", "norm_pre.bias": "ln_pre.bias",
    "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias",
}  # fmt: skip


def naming_of(state_dict: dict) -> str:
    if any(k.startswith("visual.trunk.") for k in state_dict):
        return "open_clip_timm"
    if "visual.conv1.weight" in state_dict or "conv1.weight" in state_dict:
        return "openai"
    sample = ", ".join(sorted(state_dict)[:3]) or "(none)"
    raise CheckpointError(f"not CLIP image-tower weights: no visual.conv1.weight or visual.trunk.* key (first keys: {sample})")


def visual_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors under OpenAI's names without the ``visual.`` prefix."""
    naming = naming_of(state_dict)
    if naming == "openai":
        if "visual.conv1.weight" in state_dict:
            return {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
        return dict(state_dict)
    return _from_timm({k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)})


def _from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        block = re.fullmatch(r"trunk\.blocks\.(\d+)\.(.+)", key)
        if block and block.group(2) in _TIMM_BLOCK:
            out[f"transformer.resblocks.{block.group(1)}.{_TIMM_BLOCK[block.group(2)]}"] = value
        elif key.startswith("trunk.") and key[6:] in _TIMM_TOP:
            out[_TIMM_TOP[key[6:]]] = value
        elif key == "trunk.cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "trunk.pos_embed":
            out["positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
        elif key in ("head.proj.weight", "trunk.head.weight"):
            out["proj"] = value.t().contiguous()
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"open_clip timm trunk: {len(unknown)} key(s) with no CLIP counterpart (first: visual.{unknown[0]})"
        )
    return out


def config_from_visual(state: dict[str, torch.Tensor]) -> dict:
    """The FineCLIPER config fields that the image tower's shapes fix."""
    try:
        width, _, patch, _ = state["conv1.weight"].shape
        positions = state["positional_embedding"].shape[0]
        output_dim = state["proj"].shape[1]
        hidden = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"CLIP image-tower weights lack {err.args[0]}") from err
    grid = round((positions - 1) ** 0.5)
    if grid * grid + 1 != positions:
        raise CheckpointError(f"CLIP positional_embedding has {positions} rows, not a square grid + 1 class token")
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    return {"width": width, "patch_size": patch, "image_size": grid * patch, "layers": layers,
            "heads": max(1, width // HEAD_DIM), "output_dim": output_dim, "mlp_ratio": hidden / width}  # fmt: skip


def read_clip_visual(path) -> dict[str, torch.Tensor]:
    """A CLIP checkpoint file (OpenAI, open_clip, wrapped or not) → its image tower (visual_state)."""
    from models.checkpoint import read_checkpoint, unwrap_state_dict

    return visual_state(unwrap_state_dict(read_checkpoint(path)))
