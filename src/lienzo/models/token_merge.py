"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, ToMe for SD): bipartite soft matching of
the tokens of a feature map, one destination per 2x2 cell, the most similar `ratio` of tokens merged.

`plan = merge_plan(tokens, height, width, ratio, generator)` pairs each source token with its most
similar destination (cosine similarity of `tokens`); `plan.merge(x)` averages the chosen sources into
their destinations (N tokens -> N - r), `plan.unmerge(y)` copies every result back to all the tokens it
stands for (N - r -> N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

STRIDE = 2
"""Each STRIDE x STRIDE cell of the feature map holds one destination token (the paper's sx = sy = 2)."""


@dataclass(frozen=True)
class MergePlan:
    """Which tokens merge into which, as gather/scatter indices of shape (B, n, 1)."""

    tokens: int
    source_positions: Tensor
    destination_positions: Tensor
    kept: Tensor
    merged: Tensor
    targets: Tensor

    def merge(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, N - r, C): unmerged sources, then destinations averaged with their sources."""
        batch, _, channels = x.shape
        sources = x.gather(1, self.source_positions.expand(batch, -1, channels))
        destinations = x.gather(1, self.destination_positions.expand(batch, -1, channels))
        kept = sources.gather(1, self.kept.expand(-1, -1, channels))
        merged = sources.gather(1, self.merged.expand(-1, -1, channels))
        targets = self.targets.expand(-1, -1, channels)
        destinations = destinations.scatter_reduce(1, targets, merged, reduce="mean")
        return torch.cat([kept, destinations], dim=1)

    def unmerge(self, y: Tensor) -> Tensor:
        """(B, N - r, C) -> (B, N, C): every token takes the value of the token it was merged into."""
        batch, _, channels = y.shape
        count = self.kept.shape[1]
        kept, destinations = y[:, :count], y[:, count:]
        merged = destinations.gather(1, self.targets.expand(-1, -1, channels))
        sources = self.source_positions.expand(batch, -1, -1)
        out = y.new_empty(batch, self.tokens, channels)
        out.scatter_(1, self.destination_positions.expand(batch, -1, channels), destinations)
        out.scatter_(1, sources.gather(1, self.kept).expand(-1, -1, channels), kept)
        out.scatter_(1, sources.gather(1, self.merged).expand(-1, -1, channels), merged)
        return out


def partition(height: int, width: int, generator: torch.Generator, device: torch.device) -> tuple:
    """(source positions, destination positions), each (1, n, 1): one random destination per full 2x2
    cell (the paper's random2d), every other token a source."""
    rows, cols = height // STRIDE, width // STRIDE
    choice = torch.randint(STRIDE * STRIDE, (rows, cols, 1), generator=generator)
    marks = torch.zeros(rows, cols, STRIDE * STRIDE, dtype=torch.int64).scatter_(2, choice, -1)
    grid = torch.zeros(height, width, dtype=torch.int64)
    cells = marks.view(rows, cols, STRIDE, STRIDE).transpose(1, 2).reshape(rows * STRIDE, cols * STRIDE)
    grid[: rows * STRIDE, : cols * STRIDE] = cells
    order = grid.reshape(1, -1, 1).argsort(dim=1, stable=True).to(device)
    destinations = rows * cols
    return order[:, destinations:], order[:, :destinations]


def merge_plan(
    tokens: Tensor, height: int, width: int, ratio: float, generator: torch.Generator
) -> MergePlan | None:
    """The plan merging int(ratio * N) of the (B, N = height * width, C) tokens (at most every source)
    into their most similar destinations; None when nothing would merge."""
    count = tokens.shape[1]
    if height < STRIDE or width < STRIDE:
        return None
    sources, destinations = partition(height, width, generator, tokens.device)
    merges = min(int(count * ratio), sources.shape[1])
    if merges <= 0:
        return None
    batch, _, channels = tokens.shape
    metric = tokens / tokens.norm(dim=-1, keepdim=True)
    a = metric.gather(1, sources.expand(batch, -1, channels))
    b = metric.gather(1, destinations.expand(batch, -1, channels))
    best, nearest = (a @ b.transpose(1, 2)).max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True, stable=True)[..., None]
    merged = ranked[:, :merges]
    return MergePlan(
        tokens=count,
        source_positions=sources,
        destination_positions=destinations,
        kept=ranked[:, merges:],
        merged=merged,
        targets=nearest[..., None].gather(1, merged),
    )
