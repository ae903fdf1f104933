"""UNet key and config maps between the ldm/sgm checkpoint layout and diffusers' UNet2DConditionModel.

The block numbering is derived from the architecture (levels, residual blocks per level, which levels
attend), so any configuration maps, not only the published ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.models.unet import UNetConfig

RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
RESNET_DIFFUSERS_TO_LDM = {diffusers: ldm for ldm, diffusers in RESNET_LDM_TO_DIFFUSERS.items()}

FIXED_PREFIXES = (
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
)


@dataclass(frozen=True)
class BlockLayout:
    """What fixes the block numbering: levels, residual blocks per level, which levels attend."""

    res_blocks: int
    level_attention: tuple[bool, ...]
    middle_attention: bool

    @classmethod
    def of_config(cls, config: UNetConfig) -> BlockLayout:
        """The layout of a UNet configuration."""
        return cls(
            config.num_res_blocks,
            tuple(depth > 0 for depth in config.transformer_depth),
            config.transformer_depth_middle > 0,
        )

    @classmethod
    def of_diffusers_keys(cls, keys: list[str]) -> BlockLayout:
        """The layout read from diffusers state-dict names."""
        resnets = {int(m[1]) for key in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", key))}
        levels = {int(m[1]) for key in keys if (m := re.match(r"down_blocks\.(\d+)\.", key))}
        if not resnets or sorted(levels) != list(range(len(levels))):
            raise UnknownArchitectureError(
                "no diffusers down_blocks.{i}.resnets.{j} keys found; pass a UNet2DConditionModel state dict"
            )
        attending = {int(m[1]) for key in keys if (m := re.match(r"down_blocks\.(\d+)\.attentions\.", key))}
        return cls(
            len(resnets),
            tuple(level in attending for level in range(len(levels))),
            any(key.startswith("mid_block.attentions.") for key in keys),
        )


def block_prefix_pairs(layout: BlockLayout) -> list[tuple[str, str, bool]]:
    """(ldm prefix, diffusers prefix, is_resnet) for every block of the layout."""
    pairs = [(ldm, diffusers, False) for ldm, diffusers in FIXED_PREFIXES]
    levels = len(layout.level_attention)
    index = 1
    for level, attends in enumerate(layout.level_attention):
        for block in range(layout.res_blocks):
            pairs.append((f"input_blocks.{index}.0.", f"down_blocks.{level}.resnets.{block}.", True))
            if attends:
                pairs.append((f"input_blocks.{index}.1.", f"down_blocks.{level}.attentions.{block}.", False))
            index += 1
        if level != levels - 1:
            pairs.append((f"input_blocks.{index}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", False))
            index += 1
    pairs.append(("middle_block.0.", "mid_block.resnets.0.", True))
    if layout.middle_attention:
        pairs.append(("middle_block.1.", "mid_block.attentions.0.", False))
    pairs.append((f"middle_block.{2 if layout.middle_attention else 1}.", "mid_block.resnets.1.", True))
    index = 0
    for up, attends in enumerate(reversed(layout.level_attention)):
        for block in range(layout.res_blocks + 1):
            pairs.append((f"output_blocks.{index}.0.", f"up_blocks.{up}.resnets.{block}.", True))
            if attends:
                pairs.append((f"output_blocks.{index}.1.", f"up_blocks.{up}.attentions.{block}.", False))
            if up != levels - 1 and block == layout.res_blocks:
                conv = f"output_blocks.{index}.{2 if attends else 1}.conv."
                pairs.append((conv, f"up_blocks.{up}.upsamplers.0.conv.", False))
            index += 1
    return pairs


def _rename(
    sd: dict[str, Tensor], table: dict[str, tuple[str, bool]], inner: dict[str, str], target: str
) -> dict[str, Tensor]:
    """Rename keys by their longest known block prefix; resnet inner names go through `inner`."""
    renamed = {}
    for key, value in sd.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            if prefix in table:
                new_prefix, is_resnet = table[prefix]
                rest = key[len(prefix) :]
                if is_resnet:
                    rest = _rename_resnet_part(rest, inner, key, target)
                renamed[new_prefix + rest] = value
                break
        else:
            raise UnknownArchitectureError(
                f"UNet key {key!r} has no {target} counterpart; pass the UNet weights alone "
                "(strip `model.diffusion_model.` from ldm checkpoints) of a matching architecture"
            )
    return renamed


def _rename_resnet_part(rest: str, inner: dict[str, str], key: str, target: str) -> str:
    """Rename the inside of a residual block (e.g. `in_layers.0.weight` to `norm1.weight`)."""
    for old, new in inner.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise UnknownArchitectureError(f"residual-block key {key!r} has no {target} counterpart")


def unet_ldm_to_diffusers(sd: dict[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """Rename an ldm UNet state dict (prefix stripped) to diffusers' UNet2DConditionModel names."""
    table = {
        ldm: (diffusers, is_resnet)
        for ldm, diffusers, is_resnet in block_prefix_pairs(BlockLayout.of_config(config))
    }
    return _rename(sd, table, RESNET_LDM_TO_DIFFUSERS, "diffusers")


def unet_diffusers_to_ldm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers UNet2DConditionModel state dict to ldm names (without `model.diffusion_model.`)."""
    layout = BlockLayout.of_diffusers_keys(list(sd))
    table = {diffusers: (ldm, is_resnet) for ldm, diffusers, is_resnet in block_prefix_pairs(layout)}
    return _rename(sd, table, RESNET_DIFFUSERS_TO_LDM, "ldm")


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    """A config.json dict for diffusers' UNet2DConditionModel with the same architecture."""
    depths = config.transformer_depth
    middle = config.transformer_depth_middle
    if middle == 0:
        raise InvalidArgumentError(
            "diffusers' UNet2DConditionModel needs attention in the middle block; set it"
        )
    if depths[-1] not in (0, middle):
        raise InvalidArgumentError(
            "diffusers takes the middle block's transformer depth from the last level; make them equal"
        )
    attending_depths = {depth for depth in depths if depth} | {middle}
    layer_counts: int | list[int] = (
        middle if len(attending_depths) == 1 else [depth or 1 for depth in depths[:-1]] + [middle]
    )
    block_out_channels = [config.model_channels * mult for mult in config.channel_mult]
    if config.num_head_channels > 0:
        head_counts: int | list[int] = [
            channels // config.num_head_channels for channels in block_out_channels
        ]
    else:
        head_counts = config.num_heads
    diffusers_config = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": block_out_channels,
        "layers_per_block": config.num_res_blocks,
        "transformer_layers_per_block": layer_counts,
        "attention_head_dim": head_counts,
        "cross_attention_dim": config.context_dim,
        "use_linear_projection": config.use_linear_in_transformer,
        "norm_num_groups": config.norm_groups,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }
    if config.adm_in_channels is not None:
        diffusers_config["addition_embed_type"] = "text_time"
        diffusers_config["addition_time_embed_dim"] = config.addition_time_embed_dim
        diffusers_config["projection_class_embeddings_input_dim"] = config.adm_in_channels
    return diffusers_config


def _per_level(value: int | list[int], levels: int, name: str) -> list[int]:
    """A diffusers per-level setting (one int for all levels, or a list) as a list."""
    if isinstance(value, int):
        return [value] * levels
    if len(value) != levels or not all(isinstance(item, int) for item in value):
        raise UnknownArchitectureError(f"diffusers UNet config {name}={value!r} is not one int per level")
    return list(value)


def _single(value: int | list[int], name: str) -> int:
    """A diffusers setting that lienzo supports only when it is the same at every level."""
    values = _per_level(value, 1, name) if isinstance(value, int) else list(value)
    if len(set(values)) != 1:
        raise UnknownArchitectureError(
            f"diffusers UNet config {name}={value!r} varies per level; unsupported"
        )
    return values[0]


def _heads(head_counts: int | list[int], block_out_channels: list[int]) -> dict[str, int]:
    """num_heads or num_head_channels from diffusers' `attention_head_dim` (which holds head counts).

    A single int means a fixed head count (SD 1.x style); a list with a fixed head width means
    `num_head_channels` (SD 2.x / SDXL style).
    """
    if isinstance(head_counts, int):
        return {"num_heads": head_counts}
    counts = _per_level(head_counts, len(block_out_channels), "attention_head_dim")
    head_dims = {channels // heads for channels, heads in zip(block_out_channels, counts, strict=True)}
    if len(head_dims) == 1:
        return {"num_head_channels": head_dims.pop()}
    if len(set(counts)) == 1:
        return {"num_heads": counts[0]}
    raise UnknownArchitectureError(
        f"diffusers UNet head counts {counts} keep neither the head count nor the head width fixed"
    )


def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    """UNetConfig of a diffusers UNet2DConditionModel config.json dict."""
    down_types = cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
    unknown = set(down_types) - {"CrossAttnDownBlock2D", "DownBlock2D"}
    if unknown or cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise UnknownArchitectureError(
            f"diffusers UNet with blocks {sorted(unknown)} is not a Stable Diffusion UNet"
        )
    levels = len(down_types)
    block_out_channels = list(cfg.get("block_out_channels", [320, 640, 1280, 1280]))
    model_channels = block_out_channels[0]
    layer_counts = _per_level(
        cfg.get("transformer_layers_per_block", 1), levels, "transformer_layers_per_block"
    )
    head_counts = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    adm_in_channels, time_embed_dim = None, UNetConfig.addition_time_embed_dim
    if cfg.get("addition_embed_type") == "text_time":
        adm_in_channels = cfg["projection_class_embeddings_input_dim"]
        time_embed_dim = cfg.get("addition_time_embed_dim") or time_embed_dim
    elif cfg.get("addition_embed_type") is not None:
        raise UnknownArchitectureError(
            f"diffusers addition_embed_type {cfg['addition_embed_type']!r} is unsupported"
        )
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        model_channels=model_channels,
        channel_mult=tuple(channels // model_channels for channels in block_out_channels),
        num_res_blocks=_single(cfg.get("layers_per_block", 2), "layers_per_block"),
        transformer_depth=tuple(
            count if kind == "CrossAttnDownBlock2D" else 0
            for kind, count in zip(down_types, layer_counts, strict=True)
        ),
        transformer_depth_middle=layer_counts[-1],
        context_dim=_single(cfg.get("cross_attention_dim", 1280), "cross_attention_dim"),
        use_linear_in_transformer=bool(cfg.get("use_linear_projection", False)),
        adm_in_channels=adm_in_channels,
        norm_groups=cfg.get("norm_num_groups", 32),
        addition_time_embed_dim=time_embed_dim,
        **_heads(head_counts, block_out_channels),
    )


def _indices(sd: dict[str, Tensor], pattern: str) -> set[int]:
    """The integers captured by `pattern` over the keys of a state dict."""
    regex = re.compile(pattern)
    return {int(m[1]) for key in sd if (m := regex.match(key))}


def addition_time_embed_dim(adm_in_channels: int, pooled_width: int, values: int) -> int:
    """Width of each embedded SDXL size/crop/score value: (vector input - pooled text width) / values."""
    width, remainder = divmod(adm_in_channels - pooled_width, values)
    if width <= 0 or remainder:
        raise UnknownArchitectureError(
            f"the UNet's vector input of {adm_in_channels} channels does not hold a {pooled_width}-wide "
            f"pooled text embedding plus {values} embedded values; check the model family (--family)"
        )
    return width


def unet_config_from_state_dict(
    sd_ldm: dict[str, Tensor],
    *,
    num_heads: int = 8,
    num_head_channels: int = -1,
    norm_groups: int = 32,
    vector_input: tuple[int, int] | None = None,
) -> UNetConfig:
    """UNetConfig read off an ldm UNet state dict's keys and shapes; heads and norm groups are not in it.
    An encoder alone (a ControlNet's, without `out.`) reads as out_channels = in_channels.

    `vector_input` is (pooled text width, embedded values) of an SDXL-style vector conditioning, which
    fixes `addition_time_embed_dim` (without it the default applies).
    """
    if "input_blocks.0.0.weight" not in sd_ldm:
        raise UnknownArchitectureError(
            "not an ldm UNet state dict (no input_blocks.0.0.weight); "
            "strip the `model.diffusion_model.` prefix first"
        )
    model_channels, in_channels = sd_ldm["input_blocks.0.0.weight"].shape[:2]
    levels = len(_indices(sd_ldm, r"input_blocks\.(\d+)\.0\.op\.weight$")) + 1
    input_blocks = max(_indices(sd_ldm, r"input_blocks\.(\d+)\.")) + 1
    res_blocks = (input_blocks - levels) // levels
    first_blocks = [1 + level * (res_blocks + 1) for level in range(levels)]
    channel_mult = tuple(
        sd_ldm[f"input_blocks.{index}.0.out_layers.3.weight"].shape[0] // model_channels
        for index in first_blocks
    )
    transformer_depth = tuple(
        len(_indices(sd_ldm, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\."))
        for index in first_blocks
    )
    context_keys = [key for key in sd_ldm if key.endswith("attn2.to_k.weight")]
    proj_keys = [key for key in sd_ldm if key.endswith("proj_in.weight")]
    adm = sd_ldm.get("label_emb.0.0.weight")
    time_embed_dim = UNetConfig.addition_time_embed_dim
    if adm is not None and vector_input is not None:
        time_embed_dim = addition_time_embed_dim(int(adm.shape[1]), *vector_input)
    return UNetConfig(
        in_channels=int(in_channels),
        out_channels=int(sd_ldm["out.2.weight"].shape[0]) if "out.2.weight" in sd_ldm else int(in_channels),
        model_channels=int(model_channels),
        channel_mult=channel_mult,
        num_res_blocks=res_blocks,
        transformer_depth=transformer_depth,
        transformer_depth_middle=len(_indices(sd_ldm, r"middle_block\.1\.transformer_blocks\.(\d+)\.")),
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        context_dim=int(sd_ldm[context_keys[0]].shape[1]) if context_keys else UNetConfig.context_dim,
        use_linear_in_transformer=bool(proj_keys) and sd_ldm[proj_keys[0]].ndim == 2,
        adm_in_channels=None if adm is None else int(adm.shape[1]),
        norm_groups=norm_groups,
        addition_time_embed_dim=time_embed_dim,
    )
