"""Products of a few rows with a weight matrix, read at the machine's full memory bandwidth.

Decoding multiplies one row (or a few) by every weight matrix, so it is bound by reading the weights.
On CPU torch hands such a product to the BLAS, which streams it on one core: here ~15-20 GB/s, where
both cores together read ~30. When the weight's memory is input-major ([in, out], see
`RWKV.use_gemv_layout`), its rows split into one contiguous block per thread. The compiled product
(`cpu_kernels.rows_matmul`, ~29 GB/s here) streams those blocks; where it is unavailable, a batched
product over the blocks (a view) runs the threads side by side (23-33 GB/s here), and the partial
results are summed. Results are equal up to summation order.

Weights stored in a reduced precision (bf16 or fp16 floats here, int8/int4 in `ops.quant`) meet fp32
activations (`rwkv.precision`): a product of a few rows (decoding) widens the weights and computes in
fp32, so decoding's arithmetic stays fp32 (bf16 input-major weights: the compiled product reads them
in place); a product of many rows (a prompt) is a GEMM in `gemm_dtype`, over widened tiles of the weight.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_kernels


def split_count(x: Tensor, w: Tensor) -> int:
    """How many input blocks `x @ w` runs as: the thread count for an fp32 product `cpu_kernels.few_rows`
    takes (few rows on CPU, w contiguous, outside autograd) whose input rows divide among the threads,
    else 1 (the plain product). torch's bf16 product has its own kernels (the split measured slower); a GPU
    already runs one product on the whole device; and training keeps the plain product so that its
    results do not depend on the thread count (one process or several)."""
    threads = torch.get_num_threads()
    if threads < 2 or x.dtype != torch.float32 or not cpu_kernels.few_rows(x, w) or w.shape[0] % threads:
        return 1
    return threads


def rows_matmul(x: Tensor, w: Tensor) -> Tensor:
    """x [..., in] @ w [in, out]: by the compiled product where it applies, else as `split_count` blocks
    of input rows run side by side, then summed. Under torch.compile: the plain product, for the compiler."""
    if torch.compiler.is_compiling():
        return x @ w
    if (y := cpu_kernels.rows_matmul(x, w)) is not None:
        return y
    blocks = split_count(x, w)
    if blocks == 1:
        return x @ w
    in_features, out_features = w.shape
    rows = x.reshape(-1, blocks, in_features // blocks).transpose(0, 1)  # [blocks, M, in/blocks]
    partial = torch.bmm(rows, w.view(blocks, in_features // blocks, out_features))  # [blocks, M, out]
    return partial.sum(0).view(*x.shape[:-1], out_features)


TILE_BYTES = 16 << 20  # the most memory a widened weight tile takes


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_dot() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def gemm_dtype(device: torch.device, weight_dtype: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The dtype a many-row product over reduced weights runs in (its sums are fp32 either way): on a
    GPU the weights' float dtype (bf16 for int8/int4); on a CPU bf16 only where the CPU has bf16 dot
    products (AVX512_BF16 or AMX: ~1.8x fp32 there), else fp32 (torch's bf16 GEMM without them measured
    ~6x slower than its fp32 one on an AVX2 CPU)."""
    reduced = weight_dtype if weight_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    if device.type != "cpu":
        return reduced
    return torch.bfloat16 if reduced == torch.bfloat16 and _cpu_has_bf16_dot() else torch.float32


def tiled_linear(x: Tensor, out_features: int, widen: Callable[[int, int, torch.dtype], Tensor],
                 weight_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """x [..., in] times a weight [out, in] that `widen(a, b, dtype)` gives out-row block by block (rows
    a..b in `dtype`): fp32 for a few rows (decoding), `gemm_dtype` for more; the result in x's dtype.
    Each block takes at most TILE_BYTES, so a 65536-row head is never widened whole."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() and x.requires_grad:
        return F.linear(x, widen(0, out_features, x.dtype))
    rows = x.numel() // max(x.shape[-1], 1)
    dtype = torch.float32 if rows <= cpu_kernels.MAX_ROWS else gemm_dtype(x.device, weight_dtype)
    step = max(1, TILE_BYTES // (x.shape[-1] * dtype.itemsize))
    xs = x.to(dtype)
    if step >= out_features:
        return F.linear(xs, widen(0, out_features, dtype)).to(x.dtype)
    y = x.new_empty(*x.shape[:-1], out_features)
    for a in range(0, out_features, step):
        b = min(a + step, out_features)
        y[..., a:b] = F.linear(xs, widen(a, b, dtype))
    return y


def _compiled_widening_product(x: Tensor, w: Tensor) -> Tensor | None:
    """fp32 rows x [..., in] @ bf16 w [in, out] (contiguous) by the compiled product, which widens each
    weight exactly and sums in fp32; None where it does not apply."""
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.bfloat16
            or not w.is_contiguous() or not 0 < x.numel() <= cpu_kernels.MAX_ROWS * w.shape[0]
            or (lib := cpu_kernels.library()) is None):
        return None
    rows = x.reshape(-1, w.shape[0]).contiguous()
    y = torch.empty(rows.shape[0], w.shape[1])
    lib.visualrwkv_rows_matmul(cpu_kernels.WEIGHT_DTYPES[w.dtype], rows.data_ptr(), rows.shape[0], w.data_ptr(),
                               w.shape[0], w.shape[1], y.data_ptr(), torch.get_num_threads())
    return y.view(*x.shape[:-1], w.shape[1])


def reduced_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x [..., in] (fp32) times a bf16 or fp16 weight [out, in]: see the module doc."""
    if (y := _compiled_widening_product(x, weight.t())) is not None:
        return y
    return tiled_linear(x, weight.shape[0], lambda a, b, dtype: weight[a:b].to(dtype), weight.dtype)


class Linear(nn.Linear):
    """nn.Linear without bias (same parameter, same state-dict key); in the GEMV layout it uses `rows_matmul`."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype != x.dtype and x.is_floating_point():
            return reduced_linear(x, self.weight)  # reduced weights, fp32 activations (rwkv.precision)
        w = self.weight.t()
        return rows_matmul(x, w) if w.is_contiguous() else F.linear(x, self.weight)
