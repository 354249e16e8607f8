"""What the RWKV-6 and RWKV-7 blocks share below the block level."""

from __future__ import annotations

import torch
from torch import Tensor

HEAD_SIZE_DIVISOR = 8  # ln_x eps = 1e-5 * divisor² (SPEC §2.2 step 6, §3.1 step 9)


def shifted(x: Tensor, last: Tensor | None) -> Tensor:
    """x_{t-1} for every t: the carried state (or zeros) first, then the sequence without its last."""
    first = torch.zeros_like(x[:, :1]) if last is None else last.unsqueeze(1).to(x.dtype)
    return first if x.shape[1] == 1 else torch.cat([first, x[:, :-1]], dim=1)
