"""How the fast modes (lienzo.pipelines.fast_modes) act on one sampling run: the sigma interval that
keeps guidance, DeepCache's refresh steps, and token merging hooks installed for the run's length."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from lienzo.diffusion import Denoise
from lienzo.models.blocks import BasicTransformerBlock
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.token_merge import MergePlan, merge_plan
from lienzo.models.unet import UNetModel
from lienzo.pipelines.fast_modes import FastModes
from lienzo.pipelines.steps import SIGMA_MATCH, step_at, switch_index

TOME_SEED = 0
"""Seed of the random destination choice of token merging, fresh for every run (reproducible images)."""


def guidance_interval(fast: FastModes, sigmas: torch.Tensor | None) -> tuple[float, float]:
    """The sigmas where classifier-free guidance applies: from the start down to the sigma that begins
    step round(cfg_cutoff * steps) of the run over `sigmas`, that step excluded (all with cutoff 1)."""
    if fast.cfg_cutoff >= 1:
        return 0.0, math.inf
    if sigmas is None:
        raise ValueError("a CFG cutoff needs the run's sigmas to know each call's step")
    first_unguided = switch_index(len(sigmas) - 1, fast.cfg_cutoff)
    return float(sigmas[first_unguided]) * (1 + SIGMA_MATCH), math.inf


def feature_reuse(fast: FastModes) -> FeatureReuse | None:
    """A fresh DeepCache state for one run (None with deepcache 1)."""
    return FeatureReuse() if fast.deepcache > 1 else None


def refreshing_denoiser(
    denoise: Denoise, reuse: FeatureReuse, every: int, sigmas: torch.Tensor | None
) -> Denoise:
    """`denoise` whose UNet runs whole on the steps of `sigmas` that are multiples of `every` (step 0
    first) and reuses the deep features of the last such step on the others (DeepCache's uniform
    refresh; every call of a step, as a second-order sampler makes, is alike)."""
    if sigmas is None:
        raise ValueError("DeepCache needs the run's sigmas to know each call's step")
    levels = [float(level) for level in sigmas]

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        reuse.refresh = step_at(levels, float(sigma.max())) % every == 0
        return denoise(x, sigma)

    return run


class TokenMerging:
    """Forward hooks applying ToMe for SD to a UNet: each transformer block at the highest resolution
    that has attention (the latent's own in SD 1.x/2.x, half of it in SDXL and the built-in model)
    plans a merge on its input tokens (the paper's metric), its self-attention runs on the merged tokens
    and its output is unmerged; cross-attention and the feed-forward stay whole."""

    def __init__(self, ratio: float, downsamplings: int) -> None:
        self.ratio = ratio
        self.downsamplings = downsamplings
        self.generator = torch.Generator().manual_seed(TOME_SEED)
        self.size: tuple[int, int] = (0, 0)
        self.plan: MergePlan | None = None
        self.plans = 0

    def note_size(self, module: torch.nn.Module, args: tuple) -> None:
        """UNet pre-hook: this call's (height, width) at the merging level (each stride-2 downsampling
        rounds up)."""
        height, width = args[0].shape[-2:]
        for _ in range(self.downsamplings):
            height, width = -(-height // 2), -(-width // 2)
        self.size = (height, width)

    def plan_block(self, module: torch.nn.Module, args: tuple) -> None:
        """Transformer block pre-hook: a merge plan when its tokens are the full-resolution map."""
        tokens = args[0]
        height, width = self.size
        full = tokens.shape[1] == height * width
        self.plan = merge_plan(tokens, height, width, self.ratio, self.generator) if full else None
        self.plans += self.plan is not None

    def merge(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        """Self-attention pre-hook: its input merged."""
        return None if self.plan is None else (self.plan.merge(args[0]), *args[1:])

    def unmerge(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Self-attention hook: its output unmerged."""
        return None if self.plan is None else self.plan.unmerge(output)


@contextlib.contextmanager
def token_merging(unet: UNetModel, ratio: float) -> Iterator[TokenMerging | None]:
    """ToMe hooks on `unet` while the block runs (nothing installed with ratio 0)."""
    if ratio <= 0:
        yield None
        return
    depths = unet.config.transformer_depth
    level = next((index for index, depth in enumerate(depths) if depth > 0), len(depths))
    merging = TokenMerging(ratio, level)
    blocks = [module for module in unet.modules() if isinstance(module, BasicTransformerBlock)]
    handles = [unet.register_forward_pre_hook(merging.note_size)]
    for block in blocks:
        handles.append(block.register_forward_pre_hook(merging.plan_block))
        handles.append(block.attn1.register_forward_pre_hook(merging.merge))
        handles.append(block.attn1.register_forward_hook(merging.unmerge))
    try:
        yield merging
    finally:
        for handle in handles:
            handle.remove()
