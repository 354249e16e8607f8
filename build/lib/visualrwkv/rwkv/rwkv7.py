"""The RWKV-7 "Goose" time-mix and channel-mix (SPEC §3.1), the blocks' other generation.

They sit inside the one `RWKV` model (rwkv/model.py), which picks them by `RWKVConfig.version`; the
embedding, ln0, the residual skeleton, ln_out, head and the state are shared with RWKV-6. Parameter
names follow the official `RWKV-x070-*.pth` files. The value residual `v_first` (layer 0's values)
flows from block to block beside the hidden states; it is recomputed for every token and is not state.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear import Linear, rows_matmul
from ..ops.wkv7 import wkv7
from .layers import HEAD_SIZE_DIVISOR, shifted

if TYPE_CHECKING:
    from .model import RWKVConfig

# log-decay = −softplus(−z) − 0.5 in log-log space, i.e. the decay factor is exp(−e^{−0.5}·σ(z))
DECAY_SCALE = math.exp(-0.5)


def lora(x: Tensor, down: Tensor, up: Tensor, inner=None) -> Tensor:
    """(x @ down) @ up, with an optional nonlinearity between."""
    h = rows_matmul(x, down)
    return rows_matmul(inner(h) if inner is not None else h, up)


class TimeMix7(nn.Module):
    """Token shift, data-dependent decay, value residual, in-context rate `a`, WKV-7, GroupNorm, bonus, gate."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head, self.head_size = layer_id, H, N
        for name in ("r", "w", "k", "v", "a", "g"):
            setattr(self, f"x_{name}", nn.Parameter(torch.zeros(1, 1, C)))
        self.w0 = nn.Parameter(torch.zeros(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, cfg.decay_rank))
        self.w2 = nn.Parameter(torch.zeros(cfg.decay_rank, C))
        self.a0 = nn.Parameter(torch.zeros(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, cfg.a_rank))
        self.a2 = nn.Parameter(torch.zeros(cfg.a_rank, C))
        if layer_id > 0:  # layer 0 defines v_first and has no value residual
            self.v0 = nn.Parameter(torch.zeros(1, 1, C))
            self.v1 = nn.Parameter(torch.zeros(C, cfg.value_rank))
            self.v2 = nn.Parameter(torch.zeros(cfg.value_rank, C))
        self.g1 = nn.Parameter(torch.zeros(C, cfg.gate_rank))
        self.g2 = nn.Parameter(torch.zeros(cfg.gate_rank, C))
        self.k_k = nn.Parameter(torch.zeros(1, 1, C))
        self.k_a = nn.Parameter(torch.zeros(1, 1, C))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = Linear(C, C)
        self.key = Linear(C, C)
        self.value = Linear(C, C)
        self.output = Linear(C, C)
        self.ln_x = nn.GroupNorm(H, C, eps=1e-5 * HEAD_SIZE_DIVISOR**2)

    def forward(self, x: Tensor, shift: Tensor | None, wkv_state: Tensor | None, v_first: Tensor | None):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        dx = shifted(x, shift) - x
        xr, xw, xk, xv, xa, xg = (x + dx * getattr(self, f"x_{s}") for s in "rwkvag")

        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        log_w = -DECAY_SCALE * torch.sigmoid((self.w0 + lora(xw, self.w1, self.w2, torch.tanh)).float())
        if self.layer_id == 0:
            v_first = v
        else:
            if v_first is None:
                raise ValueError("RWKV-7 layers after the first need v_first, layer 0's values")
            v = v + (v_first - v) * torch.sigmoid(self.v0 + lora(xv, self.v1, self.v2))
        a = torch.sigmoid(self.a0 + lora(xa, self.a1, self.a2))
        g = lora(xg, self.g1, self.g2, torch.sigmoid)

        def heads(t):
            return t.view(B, T, H, N)

        kk = F.normalize(heads(k * self.k_k).float(), dim=-1, p=2.0)  # κ̂: unit per head
        k = k * (1 + (a - 1) * self.k_a)
        r, k, v, a = (heads(t).float() for t in (r, k, v, a))
        y, wkv_state = wkv7(r, heads(log_w), k, v, -kk, kk * a, wkv_state)
        y = F.group_norm(y.reshape(B * T, C), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x.eps)
        # the current token's bonus, outside the kernel: (Σ_n r k r_k) v per head
        y = heads(y) + (r * k * self.r_k.float()).sum(-1, keepdim=True) * v
        out = self.output(y.view(B, T, C).to(x.dtype) * g)
        return out, x[:, -1], wkv_state, v_first


class ChannelMix7(nn.Module):
    """RWKV-7 feed-forward: token shift and squared ReLU; no receptance gate."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        C = cfg.n_embd
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.key = Linear(C, cfg.dim_ffn)
        self.value = Linear(cfg.dim_ffn, C)

    def forward(self, x: Tensor, shift: Tensor | None):
        k = torch.relu(self.key(x + (shifted(x, shift) - x) * self.x_k)).square()
        return self.value(k), x[:, -1]


@torch.no_grad()
def reset_rwkv7_block(att: TimeMix7, ffn: ChannelMix7, layer_id: int, n_layer: int) -> None:
    """The RWKV-7 initialisation of the official trainer (v7.00 `RWKV_Tmix_x070`), for training from scratch."""
    C = att.x_r.shape[-1]
    ratio0 = layer_id / max(n_layer - 1, 1)
    ratio1 = 1.0 - layer_id / n_layer
    ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
    att.x_r.copy_(1 - ddd.pow(0.2 * ratio1))
    att.x_w.copy_(1 - ddd.pow(0.9 * ratio1))
    att.x_k.copy_(1 - (ddd.pow(0.9 * ratio1) + 0.4 * ratio0))
    att.x_v.copy_(1 - (ddd.pow(0.4 * ratio1) + 0.6 * ratio0))
    att.x_a.copy_(1 - ddd.pow(0.9 * ratio1))
    att.x_g.copy_(1 - ddd.pow(0.2 * ratio1))
    n = torch.arange(C, dtype=torch.float32)
    decay_speed = -7 + 5 * (n / max(C - 1, 1)).pow(0.85 + ratio0**0.5)
    att.w0.copy_(decay_speed.view(1, 1, C) + 0.5)  # the 0.5 undoes the −0.5 of the decay's soft clamp
    att.a0.zero_()
    downs, ups = [att.w1, att.a1, att.g1], [att.w2, att.a2, att.g2]
    if layer_id > 0:
        att.v0.fill_(1.0)
        downs.append(att.v1)
        ups.append(att.v2)
    for down, up in zip(downs, ups):
        down.zero_()
        gain = math.sqrt(up.shape[0] / up.shape[1]) if up.shape[0] > up.shape[1] else 1.0
        nn.init.orthogonal_(up, gain=0.1 * gain)
    att.k_k.fill_(0.85)
    att.k_a.fill_(1.0)
    att.r_k.zero_()
    bound = C**-0.5
    att.receptance.weight.uniform_(-0.5 * bound, 0.5 * bound)
    att.key.weight.uniform_(-0.05 * bound, 0.05 * bound)
    att.value.weight.uniform_(-0.5 * bound, 0.5 * bound)
    att.output.weight.zero_()
    ffn.x_k.copy_(1 - ddd.pow(ratio1**4))
    ffn.key.weight.uniform_(-0.5 * bound, 0.5 * bound)
    ffn.value.weight.zero_()
