"""Hugging Face ``CLIPModel`` checkpoints (``config.json`` + ``model.safetensors`` as transformers writes them)
renamed to open_clip's state-dict layout, so ``ARCH:/path/model.safetensors`` loads either format.

Only the plain CLIP layout (ViT image tower, causal text transformer) has an HF counterpart; the open_clip
architecture named in the spec must match the checkpoint's sizes (a mismatch is a clear load error)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lpmr_edge.errors import UserError

HF_CLIP_MARKER = "vision_model.embeddings.patch_embedding.weight"
_DROPPED = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")
_QKV = re.compile(r"^(?P<block>.+)\.self_attn\.(?P<which>[qkv])_proj\.(?P<kind>weight|bias)$")
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_RENAMES = (  # (HF prefix or name, open_clip prefix or name), applied in order to the start of each key
    ("text_model.embeddings.token_embedding.", "token_embedding."),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.", "visual.conv1."),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
)
_BLOCK_PARTS = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def is_hf_clip(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for a state dict in transformers' ``CLIPModel`` naming."""
    return HF_CLIP_MARKER in state_dict


def _rename(key: str) -> str:
    for hf_name, open_clip_name in _RENAMES:
        if key.startswith(hf_name):
            key = open_clip_name + key[len(hf_name):]
            break
    for hf_part, open_clip_part in _BLOCK_PARTS:
        key = key.replace(f".{hf_part}", f".{open_clip_part}")
    return key


def hf_clip_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's names for an HF ``CLIPModel`` state dict: q/k/v projections concatenated into
    ``attn.in_proj_*``, the two projections transposed (HF stores them as Linear weights)."""
    converted: dict[str, torch.Tensor] = {}
    attention: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if _DROPPED.match(key):
            continue
        if key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = tensor.t().contiguous()
        elif (match := _QKV.match(key)) is not None:
            attention.setdefault((_rename(match["block"]), match["kind"]), {})[match["which"]] = tensor
        else:
            converted[_rename(key)] = tensor
    for (block, kind), parts in attention.items():
        if set(parts) != {"q", "k", "v"}:
            raise UserError(f"HF CLIP checkpoint lacks some of {block}'s q/k/v projections; it is incomplete")
        converted[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return converted


def check_activation(checkpoint: Path, model: torch.nn.Module, architecture: str) -> None:
    """A UserError when the ``config.json`` beside an HF checkpoint names another MLP activation than the
    architecture's (OpenAI-trained CLIPs use QuickGELU: pick the ``-quickgelu`` architecture for them)."""
    config_path = Path(checkpoint).with_name("config.json")
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    # transformers' CLIP configs default to quick_gelu when hidden_act is absent
    wanted = {config.get(tower, {}).get("hidden_act", "quick_gelu") for tower in ("text_config", "vision_config")}
    has_quick_gelu = type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    actual = "quick_gelu" if has_quick_gelu else "gelu"
    if wanted != {actual}:
        hint = f"{architecture}-quickgelu" if "quick_gelu" in wanted else architecture.removesuffix("-quickgelu")
        raise UserError(f"{config_path} uses activation {sorted(wanted)} but {architecture} uses {actual}; "
                        f"use the architecture {hint} in the spec")
