"""2D image scanning (SPEC §6): per layer, the image-patch span is read in another order.

Only the patches (raster order, CLS excluded) are permuted, on the residual stream before a block,
and put back after it; text positions never move. Modes:

- ``unidirection``: plain causal order in every layer.
- ``bidirection`` (v6.0 default): odd layers read every patch span reversed.
- ``multidirection``: layers cycle row-forward, row-backward, column-forward, column-backward
  (i mod 4 >= 2 transposes the grid, odd i reverses).

Spans are given per batch row, so rows may hold different numbers of images at different
positions; a row's result never depends on the other rows of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SCANNING_MODES = ("unidirection", "bidirection", "multidirection")


@dataclass(frozen=True)
class ImageSpan:
    """Sequence positions [start, end) of one image's patches, laid out as a rows × cols grid."""

    start: int
    end: int
    grid: tuple[int, int]

    def __post_init__(self):
        if self.end - self.start != self.grid[0] * self.grid[1]:
            raise ValueError(f"image span [{self.start}, {self.end}) does not hold a {self.grid} grid")

    def shifted(self, offset: int) -> "ImageSpan":
        return ImageSpan(self.start + offset, self.end + offset, self.grid)


def layer_order(mode: str, layer: int) -> tuple[bool, bool]:
    """(transpose, reverse) for one layer."""
    if mode == "unidirection":
        return False, False
    if mode == "bidirection":
        return False, layer % 2 == 1
    if mode == "multidirection":
        return layer % 4 >= 2, layer % 2 == 1
    raise ValueError(f"unknown scanning mode {mode!r}; choose one of {', '.join(SCANNING_MODES)}")


def _span_order(span: ImageSpan, transpose: bool, reverse: bool) -> Tensor:
    rows, cols = span.grid
    order = torch.arange(rows * cols)
    if transpose:  # column-major reading of a row-major grid
        order = order.view(rows, cols).t().reshape(-1)
    if reverse:
        order = order.flip(0)
    return order + span.start


def scan_permutation(spans: list[list[ImageSpan]], seq_len: int, mode: str, layer: int,
                     device=None) -> Tensor | None:
    """Index [B, T] with x_scanned[b, t] = x[b, index[b, t]], or None when the layer keeps the order."""
    transpose, reverse = layer_order(mode, layer)
    if not (transpose or reverse) or not any(spans):
        return None
    index = torch.arange(seq_len).repeat(len(spans), 1)
    for row, row_spans in enumerate(spans):
        for span in row_spans:
            if span.end > seq_len:
                raise ValueError(f"image span {span} runs past the sequence length {seq_len}")
            index[row, span.start:span.end] = _span_order(span, transpose, reverse)
    return index.to(device)


def permute(x: Tensor, index: Tensor | None) -> Tensor:
    if index is None:
        return x
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def inverse(index: Tensor | None) -> Tensor | None:
    if index is None:
        return None
    return torch.empty_like(index).scatter_(1, index, torch.arange(index.shape[1], device=index.device).expand_as(index))


def prefill_segments(spans: list[list[ImageSpan]], seq_len: int, size: int) -> list[tuple[int, int]]:
    """[start, end) pieces covering [0, seq_len), each at most `size` positions long except where one
    image's span alone is longer, and none cutting a span (of any row): a scan order reads an image
    whole, so its positions must go through a layer together."""
    if size < 1:
        raise ValueError(f"segment size must be positive, got {size}")
    blocks: list[list[int]] = []  # the spans of all rows, overlapping ones merged: disjoint blocks
    for a, b in sorted((span.start, span.end) for row in spans for span in row):
        if blocks and a < blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], b)
        else:
            blocks.append([a, b])
    pieces, start = [], 0
    while start < seq_len:
        end = min(start + size, seq_len)
        for a, b in blocks:  # an end inside a block moves back to its start, or past it if it began here
            if a < end < b:
                end = a if a > start else b
        pieces.append((start, end))
        start = end
    return pieces
