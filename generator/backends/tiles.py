"""Overlapping tiles on a latent grid, blended with feathered weights: bounded memory for large images.

A plan cuts each axis of the latent grid into spans of at most ``tile`` cells that overlap their neighbours by at
least ``overlap`` cells. Along a wrapping axis (the width of a 360° panorama) the spans run round the 0°/360° seam:
the last one continues into the first columns. :func:`run_tiled` applies a function to every tile — on latents
(the U-Net), from latents to pixels (VAE decoding) or from pixels to latents (VAE encoding) — and blends the results
with weights that ramp linearly up from a tile's inner edges, so no tile edge shows. A plan of one tile is exactly
the untiled computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .base import Cancelled


@dataclass(frozen=True)
class Span:
    """Cells ``start … start + size - 1`` (mod the axis length when it wraps) of one axis."""

    start: int
    size: int
    ramp_before: bool  # a neighbouring tile overlaps the first cells
    ramp_after: bool  # … and the last ones


@dataclass(frozen=True)
class Plan:
    """Spans per axis of a (height, width) latent grid; the tiles are every row span × every column span."""

    height: int
    width: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]
    overlap: int
    wrap: bool  # the column spans run round the seam

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def single(self) -> bool:
        return self.tiles == 1


def plan_axis(length: int, tile: int, overlap: int, wrap: bool) -> tuple[Span, ...]:
    """Spans of at most ``tile`` cells covering ``length`` cells, neighbours overlapping by ``overlap`` or more."""
    if length < 1 or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"cannot tile {length} cells by {tile} with overlap {overlap}")
    if length <= tile:
        return (Span(0, length, False, False),)
    if wrap:  # n spans round the circle, evenly spaced, each reaching into the next
        count = math.ceil(length / (tile - overlap))
        return tuple(Span(round(i * length / count), tile, True, True) for i in range(count))
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return tuple(Span(s, tile, i > 0, i < count - 1) for i, s in enumerate(starts))


def make_plan(height: int, width: int, tile: int, wrap: bool) -> Plan:
    """A plan for a latent grid; overlap a quarter of the tile (at least one cell)."""
    overlap = max(1, tile // 4)
    return Plan(height, width, plan_axis(height, tile, overlap, False), plan_axis(width, tile, overlap, wrap),
                overlap, wrap)


def _ramp(span: Span, overlap: int, scale: int, device: torch.device) -> torch.Tensor:
    """Per-cell weights of a span at ``scale`` samples per cell: rising over the overlap at ramped ends."""
    size, width = span.size * scale, overlap * scale
    weights = torch.ones(size, device=device)
    rise = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + 1)
    if span.ramp_before:
        weights[:width] = torch.minimum(weights[:width], rise)
    if span.ramp_after:
        weights[size - width:] = torch.minimum(weights[size - width:], rise.flip(0))
    return weights


def _columns(span: Span, width: int, scale: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(span.size * scale, device=device) + span.start * scale) % (width * scale)


def run_tiled(fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor, plan: Plan, *,
              scale_in: int = 1, scale_out: int = 1, out_channels: int, cancelled: Callable[[], bool] | None = None,
              ) -> torch.Tensor:
    """``fn(tile_index, tile_of_x)`` for every tile, blended into one (1, out_channels, H·scale_out, W·scale_out)
    float32 tensor. ``x`` is (N, C, H·scale_in, W·scale_in); ``cancelled`` is asked before each tile."""
    if plan.single:
        return fn(0, x).float()
    device = x.device
    out = torch.zeros((1, out_channels, plan.height * scale_out, plan.width * scale_out), device=device)
    total = torch.zeros((1, 1, plan.height * scale_out, plan.width * scale_out), device=device)
    index = 0
    for row in plan.rows:
        tile_rows = x[:, :, row.start * scale_in:(row.start + row.size) * scale_in]
        row_weights = _ramp(row, plan.overlap, scale_out, device)
        top, bottom = row.start * scale_out, (row.start + row.size) * scale_out
        for col in plan.cols:
            if cancelled is not None and cancelled():
                raise Cancelled()
            tile = tile_rows.index_select(3, _columns(col, plan.width, scale_in, device))
            result = fn(index, tile).float()
            index += 1
            weights = row_weights[:, None] * _ramp(col, plan.overlap, scale_out, device)[None, :]
            where = _columns(col, plan.width, scale_out, device)
            out[:, :, top:bottom].index_add_(3, where, result * weights)
            total[:, :, top:bottom].index_add_(3, where, weights.expand(1, 1, -1, -1))
    return out / total
