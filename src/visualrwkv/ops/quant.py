"""8-bit and 4-bit weights: the formats, and the products and row look-ups that read them.

**Format.** A matrix W [rows, k] (a linear layer's [out, in], or the embedding's [vocab, C]) is cut
into groups of `GROUP_SIZE` = 32 consecutive values along k, the dimension a product sums over (for
the embedding: along a row). Each group has one float16 scale s, and W ≈ s·q:
- int8: q = round(w / s) in [-127, 127], s = max|w| / 127 (symmetric; 8.5 bits a weight);
- int4: q in [-8, 7], stored as q + 8 in one nibble, two per byte: value 2p in the low nibble and
  2p + 1 in the high one (4.5 bits a weight). s is the one of 16 candidates (max|w| / c, with the
  largest value mapped to -8 or to +7, each refitted by least squares to its codes) that gives the
  group the least squared error: a tenth to a fifth less than the plain absmax/-8 rule.
The bytes per weight are those of llama.cpp's Q8_0 and Q4_0 (also 32 per fp16 scale), so speed
comparisons read the same bytes. Activations are never rounded: where llama.cpp quantizes them to 8 bits,
the compiled product splits each block of them into signed bytes that hold 30 to 45 bits of it (see
cpu_products.h), so that it sums in integers and still equals the fp32 product up to summation order.

**Memory layout.** A linear layer's codes live in the *tile layout* the compiled product reads
(`to_tiles`; cpu_products.h has the why): per group of input rows (padded to a multiple of 8 rows with
zero codes), per block of 64 output columns, one contiguous tile, in which the codes of four consecutive
input rows of a column sit side by side (int8 as q + 128; int4 as q + 8, rows 8o..8o+3 in the low
nibbles and 8o+4..8o+7 in the high ones), so that vpdpbusd reads four input rows of 16 columns per
64-byte load and a thread streams its block of groups front to back. `weight` is that flat uint8
buffer; `state_dict()` gives (and `load_state_dict` takes) the codes of `quantize` instead ([out, in]
int8, or packed int4 [out, in/2]), so files keep that format. Scales are [in/group, out] row-major
(an [out, in/group] tensor in input-major memory): each group's scale row is read once per chunk of
columns. The embedding is read by rows, so its codes are [vocab, C] (int4 [vocab, C/2]) and its scales
[vocab, C/32] in row-major memory.

Products: a few fp32 rows on CPU (decoding) go to the compiled product (`cpu_kernels.quantized_matmul`,
also inside the compiled decode step), which reads the tiles and scales in place: the
dequantize-then-fp32 product up to summation order. Otherwise the weight is widened (dequantized)
block of output rows by block into fp32 (a few rows) or into the GEMM dtype of `ops.linear.gemm_dtype`
(prompts).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cpu_kernels
from .linear import tiled_linear

GROUP_SIZE = 32
BITS = (8, 4)
_QMAX = {8: 127, 4: 7}
# int4 candidates: the group's largest value maps to -8 (llama.cpp's Q4_0 rule) or +7, and a little inside
_INT4_DIVISORS = [-8.0 + 0.25 * i for i in range(8)] + [7.0 - 0.25 * i for i in range(8)]
_CHUNK = 1 << 14  # rows quantized at a time (bounds the search's temporaries)


def check_shape(rows: int, k: int, bits: int, group_size: int = GROUP_SIZE, what: str = "matrix") -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"{what}: {k} values per row do not split into groups of {group_size}")


def _scale_codes(g: Tensor, scale: Tensor, bits: int) -> Tensor:
    q = torch.where(scale != 0, g / torch.where(scale != 0, scale, 1), 0).round_()
    return q.clamp_(-_QMAX[bits] - (bits == 4), _QMAX[bits])


def _to_scale(s: Tensor) -> Tensor:
    if not torch.isfinite(s).all() or s.abs().max() > torch.finfo(torch.float16).max:
        raise ValueError("weights too large for float16 scales")
    return s.half()


def _quantize_groups(g: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """g [n, G] fp32 → (codes [n, G] in [-8, 7] or [-127, 127] as float, scales [n] fp16)."""
    if bits == 8:
        scale = _to_scale(g.abs().amax(-1) / 127)
        return _scale_codes(g, scale.float()[:, None], 8), scale
    idx = g.abs().argmax(-1, keepdim=True)
    peak = g.gather(-1, idx)  # the signed value of largest magnitude
    best_err = best_q = best_s = None
    for c in _INT4_DIVISORS:
        q = _scale_codes(g, peak / c, 4)
        qq = (q * q).sum(-1, keepdim=True)
        s = _to_scale(torch.where(qq > 0, (g * q).sum(-1, keepdim=True) / qq.clamp(min=1), 0)).float()
        err = (g - q * s).square().sum(-1)
        if best_err is None:
            best_err, best_q, best_s = err, q, s
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_q = torch.where(better[:, None], q, best_q)
            best_s = torch.where(better[:, None], s, best_s)
    return best_q, best_s[:, 0].half()


@torch.no_grad()
def quantize(w: Tensor, bits: int, group_size: int = GROUP_SIZE) -> tuple[Tensor, Tensor]:
    """w [rows, k] float → (codes, scales), groups along k: int8 codes [rows, k] or packed int4 codes
    uint8 [rows, k/2]; fp16 scales [rows, k/group_size]. Row-major (contiguous) results."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize takes a 2-D float matrix, got {tuple(w.shape)} {w.dtype}")
    rows, k = w.shape
    check_shape(rows, k, bits, group_size)
    codes, scales = [], []
    for start in range(0, rows, _CHUNK):
        g = w[start:start + _CHUNK].float().reshape(-1, group_size)
        q, s = _quantize_groups(g, bits)
        q = q.reshape(-1, k)
        codes.append(q.to(torch.int8) if bits == 8 else pack_int4(q))
        scales.append(s.reshape(-1, k // group_size))
    return torch.cat(codes), torch.cat(scales)


def pack_int4(q: Tensor) -> Tensor:
    """Codes in [-8, 7] [..., k] → uint8 [..., k/2]: value 2p in the low nibble, 2p + 1 in the high."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 [..., k/2] → int8 codes [..., k] in [-8, 7]."""
    low = (packed & 15).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


TILE_COLUMNS = 64  # output columns per tile (cpu_products.h: one 64-byte load holds 16 of them, 4 rows each)


def padded_group(group_size: int) -> int:
    """Rows a group takes in the tile layout: a multiple of 8 (int4 packs eight rows per 32-bit lane)."""
    return -(-group_size // 8) * 8


def tile_bytes(in_features: int, out_features: int, bits: int, group_size: int) -> int:
    return in_features // group_size * padded_group(group_size) * out_features * bits // 8


def _offset_codes(codes: Tensor, bits: int) -> Tensor:
    """quantize()'s codes [out, k] → unsigned codes [out, k] (int8 q + 128, int4 q + 8) as int16."""
    return codes.to(torch.int16) + 128 if bits == 8 else (unpack_int4(codes).to(torch.int16) + 8)


def to_tiles(codes: Tensor, bits: int, group_size: int) -> Tensor:
    """quantize()'s codes of an [out, in] matrix → the flat uint8 tile layout (see the module doc)."""
    out, k = codes.shape[0], codes.shape[1] * (2 if bits == 4 else 1)
    groups, padded, lane_rows = k // group_size, padded_group(group_size), 4 if bits == 8 else 8
    q = _offset_codes(codes, bits).t().reshape(groups, group_size, out)
    if padded != group_size:  # padding rows hold the code of 0
        q = torch.cat([q, q.new_full((groups, padded - group_size, out), 128 if bits == 8 else 8)], 1)
    if bits == 4:  # rows 8o..8o+3 in the low nibbles, 8o+4..8o+7 in the high ones
        q = q.reshape(groups, padded // 8, 2, 4, out)
        q = q[:, :, 0] | (q[:, :, 1] << 4)
    q = q.to(torch.uint8).reshape(groups, padded // lane_rows, 4, out)  # [group, row quad, row in quad, column]
    whole, tail = divmod(out, TILE_COLUMNS)
    tiles = []
    if whole:  # [group, tile, row quad, column, row in quad]
        tiles.append(q[..., :whole * TILE_COLUMNS].reshape(groups, -1, 4, whole, TILE_COLUMNS)
                     .permute(0, 3, 1, 4, 2).reshape(groups, -1))
    if tail:
        tiles.append(q[..., whole * TILE_COLUMNS:].permute(0, 1, 3, 2).reshape(groups, -1))
    return torch.cat(tiles, 1).reshape(-1).contiguous()


def from_tiles(tiles: Tensor, bits: int, group_size: int, in_features: int, out_features: int, a: int = 0,
               b: int | None = None) -> Tensor:
    """The tiles' codes for output rows a..b, as quantize() gives them ([b - a, in] int8, or packed int4
    [b - a, in/2]). Reads only the tiles of those columns."""
    b = out_features if b is None else b
    groups, padded, lane_rows = in_features // group_size, padded_group(group_size), 4 if bits == 8 else 8
    per_group = tiles.view(groups, -1)
    tile = padded * TILE_COLUMNS * bits // 8  # bytes of a whole tile
    whole = out_features // TILE_COLUMNS
    first, last = a // TILE_COLUMNS, min(-(-b // TILE_COLUMNS), whole)
    parts = []  # each [columns, group, row quad, row in quad]
    if first < last:
        parts.append(per_group[:, first * tile:last * tile].reshape(groups, last - first, padded // lane_rows,
                                                                     TILE_COLUMNS, 4)
                     .permute(1, 3, 0, 2, 4).reshape(-1, groups, padded // lane_rows, 4))
    if b > whole * TILE_COLUMNS:
        parts.append(per_group[:, whole * tile:].reshape(groups, padded // lane_rows, -1, 4).permute(2, 0, 1, 3))
    start = min(first, whole) * TILE_COLUMNS
    v = torch.cat(parts)[a - start:b - start]
    if bits == 4:  # back to eight rows per lane: the low nibbles' four, then the high nibbles' four
        v = torch.stack([v & 15, v >> 4], 3)
    q = v.reshape(b - a, groups, padded)[:, :, :group_size].reshape(b - a, in_features).to(torch.int16)
    if bits == 8:
        return (q - 128).to(torch.int8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def dequantize(codes: Tensor, scales: Tensor, bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(codes, scales) of rows grouped along the last dimension → the weights [rows, k] in `dtype`.
    Works on any block of whole rows or whole groups (a tile of a matrix, gathered embedding rows)."""
    q = codes if bits == 8 else unpack_int4(codes)
    k, n_groups = q.shape[-1], scales.shape[-1]
    w = q.to(torch.float32).unflatten(-1, (n_groups, k // n_groups)) * scales.float().unsqueeze(-1)
    return w.flatten(-2).to(dtype)


def _input_major(t: Tensor) -> Tensor:
    """The same [rows, k] values with [k, rows] memory (a transposed view of a contiguous tensor)."""
    return t.t().contiguous().t()


class QuantizedLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights, its codes in the tile layout (see the module doc).

    `weight` holds the tiles (a flat uint8 Parameter without gradient, so that code looking for a float
    `weight` of the usual shape sees that this is not one); `weight_scales` the fp16 scales. `codes()`
    gives the codes as `quantize` does; so do `state_dict()` and the files."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = GROUP_SIZE, device=None):
        super().__init__()
        check_shape(out_features, in_features, bits, group_size, "linear layer")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        tiles = torch.zeros(tile_bytes(in_features, out_features, bits, group_size), dtype=torch.uint8, device=device)
        self.weight = nn.Parameter(tiles, requires_grad=False)
        scales = torch.zeros(in_features // group_size, out_features, dtype=torch.float16, device=device)
        self.register_buffer("weight_scales", scales.t())

    @classmethod
    def from_float(cls, weight: Tensor, bits: int, group_size: int = GROUP_SIZE) -> "QuantizedLinear":
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bits, group_size, device="meta")
        codes, scales = quantize(weight.detach(), bits, group_size)
        layer.weight = nn.Parameter(to_tiles(codes, bits, group_size), requires_grad=False)
        layer.weight_scales = _input_major(scales)
        return layer

    def codes(self, a: int = 0, b: int | None = None) -> Tensor:
        """The codes of output rows a..b as `quantize` gives them."""
        return from_tiles(self.weight, self.bits, self.group_size, self.in_features, self.out_features, a, b)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize(self.codes(), self.weight_scales, self.bits, dtype)

    def forward(self, x: Tensor) -> Tensor:
        # a few rows (decoding, the head after the compiled step): the compiled product reads the tiles in place
        if (y := cpu_kernels.quantized_matmul(x, self)) is not None:
            return y
        return tiled_linear(x, self.out_features, self.dequantize_rows)

    def dequantize_rows(self, a: int, b: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Output rows a..b of the weight in `dtype` (the compiled kernel where it applies: ~4x torch's ops)."""
        if not 0 <= a < b <= self.out_features:
            raise ValueError(f"rows {a}..{b} are not a block of this layer's {self.out_features} output rows")
        if (w := cpu_kernels.dequantize_rows(self, a, b, dtype)) is not None:
            return w
        return dequantize(self.codes(a, b), self.weight_scales[a:b], self.bits, dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.codes()  # the format of quantize() and the files

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        codes = state_dict.get(prefix + "weight")  # (state_dict is load_state_dict's own copy)
        width = self.in_features // (2 if self.bits == 4 else 1)
        if codes is not None and codes.shape == (self.out_features, width) and \
                codes.dtype == (torch.int8 if self.bits == 8 else torch.uint8):
            state_dict[prefix + "weight"] = to_tiles(codes, self.bits, self.group_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}, " \
               f"group_size={self.group_size}"


class QuantizedEmbedding(nn.Module):
    """Embedding rows in int8 or int4 (row-major: a look-up reads whole rows); returns fp32 rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, group_size: int = GROUP_SIZE, device=None):
        super().__init__()
        check_shape(num_embeddings, embedding_dim, bits, group_size, "embedding")
        self.num_embeddings, self.embedding_dim, self.bits, self.group_size = \
            num_embeddings, embedding_dim, bits, group_size
        width = embedding_dim if bits == 8 else embedding_dim // 2
        self.weight = nn.Parameter(torch.zeros(num_embeddings, width, device=device,
                                               dtype=torch.int8 if bits == 8 else torch.uint8), requires_grad=False)
        self.register_buffer("weight_scales", torch.zeros(num_embeddings, embedding_dim // group_size,
                                                          dtype=torch.float16, device=device))

    @classmethod
    def from_float(cls, weight: Tensor, bits: int, group_size: int = GROUP_SIZE) -> "QuantizedEmbedding":
        layer = cls(*weight.shape, bits, group_size, device="meta")
        codes, scales = quantize(weight.detach(), bits, group_size)
        layer.weight = nn.Parameter(codes, requires_grad=False)
        layer.weight_scales = scales
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize(self.weight, self.weight_scales, self.bits, dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return dequantize(self.weight[ids], self.weight_scales[ids], self.bits)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, group_size={self.group_size}"


__all__ = ["GROUP_SIZE", "QuantizedLinear", "QuantizedEmbedding", "quantize", "dequantize", "pack_int4", "unpack_int4",
           "to_tiles", "from_tiles"]
