"""CLIP text tower maps: OpenCLIP (ldm/sgm single-file) keys <-> transformers keys, and config.json.

OpenCLIP keys are given without the checkpoint prefix, which the caller strips (SD2:
`cond_stage_model.model.`, SDXL: `conditioner.embedders.1.model.`). Checkpoints may carry more
resblocks than the model runs (SD2 files hold all 24 of OpenCLIP-H, whose penultimate output the
23-layer SD2 encoder reproduces); these maps convert every block they are given and the caller drops
`transformer.resblocks.{i}` with i >= the config's `num_hidden_layers` before loading.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from lienzo.errors import UnknownArchitectureError
from lienzo.models.clip import CLIPTextConfig

HF_PREFIX = "text_model."
HF_LAYER = "text_model.encoder.layers.{}."
UNPREFIXED_HF_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")

OPENCLIP_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
OPENCLIP_IGNORED = {"logit_scale", "attn_mask"}
OPENCLIP_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)")
OPENCLIP_IN_PROJ_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
HF_BLOCK_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
QKV = ("q_proj", "k_proj", "v_proj")


def clip_openclip_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an OpenCLIP text tower's state dict to transformers' keys, splitting in_proj into q, k, v."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in OPENCLIP_FIXED:
            out[OPENCLIP_FIXED[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key in OPENCLIP_IGNORED:
            continue
        elif match := OPENCLIP_IN_PROJ_KEY.fullmatch(key):
            index, kind = match.groups()
            for name, part in zip(QKV, value.chunk(3, dim=0), strict=True):
                out[f"{HF_LAYER.format(index)}self_attn.{name}.{kind}"] = part.contiguous()
        elif (match := OPENCLIP_BLOCK_KEY.fullmatch(key)) and match.group(2) in OPENCLIP_BLOCK:
            index, module, kind = match.groups()
            out[f"{HF_LAYER.format(index)}{OPENCLIP_BLOCK[module]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnknownArchitectureError(
            f"not an OpenCLIP text tower: unexpected keys {unknown[:5]}; "
            "strip the checkpoint prefix (e.g. 'cond_stage_model.model.') before converting"
        )
    return out


def clip_hf_canonical(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Transformers CLIP text weights in our key layout: `text_model.` prefixed, no `position_ids` buffer.

    transformers 5 saves a plain CLIPTextModel without the `text_model.` prefix that older files and
    CLIPTextModelWithProjection carry; both layouts come out the same here.
    """
    out = {}
    for key, value in sd.items():
        if key.endswith("embeddings.position_ids"):
            continue
        prefixed = key.startswith(UNPREFIXED_HF_ROOTS)
        out[HF_PREFIX + key if prefixed else key] = value
    return out


def clip_hf_to_openclip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers CLIP text keys to OpenCLIP ones, stacking in_proj = cat(q, k, v)."""
    fixed = {hf: openclip for openclip, hf in OPENCLIP_FIXED.items()}
    block = {hf: openclip for openclip, hf in OPENCLIP_BLOCK.items()}
    out: dict[str, Tensor] = {}
    attention_parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        if key in fixed:
            out[fixed[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "text_model.embeddings.position_ids":
            continue
        elif match := HF_BLOCK_KEY.fullmatch(key):
            index, module, kind = match.groups()
            if module.startswith("self_attn.") and module.removeprefix("self_attn.") in QKV:
                attention_parts.setdefault((index, kind), {})[module.removeprefix("self_attn.")] = value
            elif module in block:
                out[f"transformer.resblocks.{index}.{block[module]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (index, kind), parts in attention_parts.items():
        if set(parts) != set(QKV):
            unknown.extend(f"{HF_LAYER.format(index)}self_attn.{name}.{kind}" for name in parts)
            continue
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat([parts[name] for name in QKV])
    if unknown:
        raise UnknownArchitectureError(
            f"not a complete transformers CLIP text state dict: unexpected or unpaired keys {unknown[:5]}"
        )
    return out


def clip_config_from_transformers(cfg: dict) -> CLIPTextConfig:
    """Our config from a transformers `config.json` dict (CLIPTextModel, ...WithProjection or a CLIPModel)."""
    text = cfg.get("text_config", cfg)
    with_projection = any("WithProjection" in name for name in cfg.get("architectures") or [])
    defaults = CLIPTextConfig()
    return CLIPTextConfig(
        vocab_size=text.get("vocab_size", defaults.vocab_size),
        max_position_embeddings=text.get("max_position_embeddings", defaults.max_position_embeddings),
        hidden_size=text.get("hidden_size", defaults.hidden_size),
        intermediate_size=text.get("intermediate_size", defaults.intermediate_size),
        num_hidden_layers=text.get("num_hidden_layers", defaults.num_hidden_layers),
        num_attention_heads=text.get("num_attention_heads", defaults.num_attention_heads),
        hidden_act=text.get("hidden_act", defaults.hidden_act),
        layer_norm_eps=text.get("layer_norm_eps", defaults.layer_norm_eps),
        projection_dim=text.get("projection_dim") if with_projection else None,
    )


def clip_config_to_transformers(cfg: CLIPTextConfig) -> dict:
    """A transformers `config.json` dict for CLIPTextModel, or CLIPTextModelWithProjection with a projection.

    The token ids are the legacy ones diffusers ships (eos 2), which makes transformers pool at the argmax
    of the ids, as this package does.
    """
    architecture = "CLIPTextModel" if cfg.projection_dim is None else "CLIPTextModelWithProjection"
    config = {
        "architectures": [architecture],
        "model_type": "clip_text_model",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "hidden_act": cfg.hidden_act,
        "layer_norm_eps": cfg.layer_norm_eps,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    if cfg.projection_dim is not None:
        config["projection_dim"] = cfg.projection_dim
    return config


def clip_config_from_state_dict(
    sd_hf: dict[str, Tensor], heads: int | None = None, hidden_act: str = "quick_gelu"
) -> CLIPTextConfig:
    """Infer a config from transformers-named weights; heads default to width // 64, hidden_act is given."""
    token_key = "text_model.embeddings.token_embedding.weight"
    if token_key not in sd_hf:
        raise UnknownArchitectureError(
            f"not a CLIP text state dict: {token_key!r} is missing; "
            "convert OpenCLIP keys with clip_openclip_to_hf first"
        )
    vocab_size, hidden_size = sd_hf[token_key].shape
    layer_indices = {int(match.group(1)) for key in sd_hf if (match := HF_BLOCK_KEY.fullmatch(key))}
    if not layer_indices:
        raise UnknownArchitectureError("not a CLIP text state dict: it has no encoder layers")
    projection = sd_hf.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=sd_hf["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_size=hidden_size,
        intermediate_size=sd_hf[f"{HF_LAYER.format(0)}mlp.fc1.weight"].shape[0],
        num_hidden_layers=max(layer_indices) + 1,
        num_attention_heads=heads if heads is not None else max(1, hidden_size // 64),
        hidden_act=hidden_act,
        projection_dim=None if projection is None else projection.shape[0],
    )
