"""Products of a few rows with a weight matrix, read at the machine's full memory bandwidth.

Decoding multiplies one row (or a few) by every weight matrix, so it is bound by reading the weights.
On CPU torch hands such a product to the BLAS, which streams it on one core: here ~15-20 GB/s, where
both cores together read ~30. When the weight's memory is input-major ([in, out], see
`RWKV.use_gemv_layout`), its rows split into one contiguous block per thread. The compiled product
(`cpu_kernels.rows_matmul`, ~29 GB/s here) streams those blocks; where it is unavailable, a batched
product over the blocks (a view) runs the threads side by side (23-33 GB/s here), and the partial
results are summed. Results are equal up to summation order.
"""

from __future__ import annotations

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


class Linear(nn.Linear):
    """nn.Linear without bias (same parameter, same state-dict key); in the GEMV layout it uses `rows_matmul`."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.t()
        return rows_matmul(x, w) if w.is_contiguous() else F.linear(x, self.weight)
