"""WKV6, the RWKV-6 time-mix recurrence (SPEC §2.2 step 5, §2.7), in plain PyTorch.

Layout (the flash-linear-attention convention): r, k, v, log_w are [B, T, H, N]; u (the bonus,
`time_faaaa`) is [H, N]; the state S is [B, H, N, N] indexed [batch, head, key j, value i], fp32.
`log_w` is the log of the decay factor, −exp(w_raw) ≤ 0. Per step:

    y_t[i] = Σ_j r_t[j] (u[j] k_t[j] v_t[i] + S[j, i]);   S[j, i] ← exp(log_w_t[j]) S[j, i] + k_t[j] v_t[i]

`wkv6` is the one dispatch point: the recurrent step for a single token; on CUDA, the Triton kernel
of flash-linear-attention (`pip install flash-linear-attention`) when it imports; the chunked form
otherwise. All math runs in fp32; outputs are fp32.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os

import torch
from torch import Tensor

DEFAULT_CHUNK = 32
# Sequences are processed in segments of this many tokens, which bounds the per-chunk start states
# ([T/chunk, N, N] per head) and the other temporaries a long prefill holds: 256 against 2048 took a
# 1024-position call from 63 to 24 MiB at C768, at the same speed (RWKV-6 and RWKV-7, 4K prompts).
SEGMENT = 256
# Floor on the log-decay inside the chunked form: exp(-20) ≈ 2e-9 is zero for every practical
# purpose, and the floor keeps −inf (exp overflow of a huge w_raw) out of the sums.
LOG_DECAY_FLOOR = -20.0


def wkv6_recurrent(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None):
    """Token-by-token reference. Returns (y [B,T,H,N] fp32, final state [B,H,N,N] fp32)."""
    B, T, H, N = r.shape
    r, k, v, w = (x.float() for x in (r, k, v, log_w.float().exp()))
    u = u.float().view(1, H, N, 1)
    S = _initial_state(state, B, H, N, r.device)
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B,H,N(key),N(value)]
        ys.append(torch.einsum("bhj,bhji->bhi", r[:, t], S + u * kv))
        S = w[:, t, :, :, None] * S + kv
    return torch.stack(ys, dim=1), S


def wkv6_step(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor):
    """One token: r, k, v, log_w are [B,H,N]. Returns (y [B,H,N], new state); the input state is not modified."""
    r, k, v = r.float(), k.float(), v.float()
    # Σ_j r[j] u[j] k[j] v[i] is a dot product times v: no [N, N] temporaries besides the new state
    y = (r.unsqueeze(-2) @ state).squeeze(-2) + (r * u.float() * k).sum(-1, keepdim=True) * v
    new_state = log_w.float().exp().unsqueeze(-1) * state
    return y, new_state.addcmul_(k.unsqueeze(-1), v.unsqueeze(-2))


def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None,
                 chunk_size: int = DEFAULT_CHUNK):
    """Parallel form over chunks (SPEC §2.7), exact up to fp32 rounding for any decay strength.

    Every decay factor this computes is exp of a sum of log-decays taken directly over the tokens
    between two positions, so it lies in [0, 1]: nothing can overflow (the single-matmul
    factorisation exp(b̄_i)·exp(−b_j) overflows with strong decays), and no large cumulative sums are
    subtracted from each other (which would lose fp32 precision). Inside a chunk the pairs (i > j)
    are covered by halving: at each level the pairs that straddle the midpoint of a block factor
    exactly through that midpoint, so each level is two batched matmuls. Across chunks the state is
    carried by one multiply-add per chunk; everything else is batched over all chunks.
    """
    if chunk_size < 2 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 2, got {chunk_size}")
    B, T, H, N = r.shape
    S = _initial_state(state, B, H, N, r.device)
    if T == 0:
        return r.new_zeros(B, 0, H, N, dtype=torch.float32), S
    C = min(chunk_size, 1 << max(1, (T - 1).bit_length()))  # short inputs get a short chunk
    ys = []
    for start in range(0, T, SEGMENT):
        end = min(T, start + SEGMENT)
        y, S = _chunked_segment(r[:, start:end], k[:, start:end], v[:, start:end], log_w[:, start:end], u, S, C)
        ys.append(y)
    return (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)), S


def _exclusive_cumsum(x: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Σ of the elements strictly before (or, reversed, strictly after) each position along `dim`."""
    if reverse:
        return _exclusive_cumsum(x.flip(dim), dim).flip(dim)
    shifted = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
    return shifted.cumsum(dim)


def _chunked_segment(r, k, v, log_w, u, S, C):
    B, T, H, N = r.shape
    pad = (-T) % C

    # [B,T,H,N] -> [B,H,nC,C,N], zero-padded at the end; padded steps have k = v = 0 and log_w = 0,
    # so they change neither the outputs we keep nor the state.
    def chunks(x):
        x = x.float().transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, -1, C, N)

    r, k, v = chunks(r), chunks(k), chunks(v)
    lw = chunks(log_w.float().clamp(min=LOG_DECAY_FLOOR))
    nC = r.shape[2]

    # the current token: y_i = (r_i · u · k_i) v_i
    y = torch.einsum("bhcid,hd,bhcid->bhci", r, u.float(), k).unsqueeze(-1) * v

    # pairs j < i inside a chunk, by halving: a block of size m = 2h, rows i in the second half,
    # columns j in the first: exp(Σ_{j<m<i} λ) = exp(Σ_{h<=m<i} λ) · exp(Σ_{j<m<h} λ), both <= 1
    h = C // 2
    while h >= 1:
        shape = (B, H, nC * C // (2 * h), 2, h, N)
        lw_b, r_b, k_b, v_b = (x.reshape(shape) for x in (lw, r, k, v))
        r_tilde = r_b[:, :, :, 1] * _exclusive_cumsum(lw_b[:, :, :, 1], dim=-2).exp()
        k_tilde = k_b[:, :, :, 0] * _exclusive_cumsum(lw_b[:, :, :, 0], dim=-2, reverse=True).exp()
        contrib = r_tilde @ k_tilde.transpose(-1, -2)  # [.., h(i), h(j)], all j < i
        y_b = y.reshape(shape)
        y_b[:, :, :, 1] += contrib @ v_b[:, :, :, 0]
        h //= 2

    # chunk-to-chunk state carry: S_end = exp(Σλ) ⊙ S_start + Σ_j (k_j exp(Σ_{m>j} λ_m)) v_jᵀ
    kv = (k * _exclusive_cumsum(lw, dim=3, reverse=True).exp()).transpose(-1, -2) @ v  # [B,H,nC,N,N]
    decay = lw.sum(dim=3).exp().unsqueeze(-1)  # [B,H,nC,N,1]
    starts = []
    for c in range(nC):
        starts.append(S)
        S = decay[:, :, c] * S + kv[:, :, c]
    S_start = torch.stack(starts, dim=2)  # [B,H,nC,N,N]

    # inter-chunk: o_i += (r_i ⊙ exp(Σ_{m<i} λ_m))ᵀ S_start
    y = y + (r * _exclusive_cumsum(lw, dim=3).exp()) @ S_start
    y = y.reshape(B, H, nC * C, N)[:, :, :T].transpose(1, 2)
    return y, S


def wkv6(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None):
    """Dispatch: returns (y [B,T,H,N] fp32, final state [B,H,N,N] fp32)."""
    B, T, H, N = r.shape
    if T == 1:
        S = _initial_state(state, B, H, N, r.device)
        y, S = wkv6_step(r[:, 0], k[:, 0], v[:, 0], log_w[:, 0], u, S)
        return y.unsqueeze(1), S
    if r.is_cuda and (kernel := fla_kernel()) is not None:
        return wkv6_fla(kernel, r, k, v, log_w, u, state)
    return wkv6_chunked(r, k, v, log_w, u, state)


@functools.cache
def fla_op(module: str, name: str):
    """A chunked Triton kernel of flash-linear-attention (`pip install flash-linear-attention`), or None:
    not installed, no Triton, or VISUALRWKV_FLA=0. Looked up once. Older fla versions default to
    head-first inputs, so the layout is named when the kernel takes it."""
    if os.environ.get("VISUALRWKV_FLA", "1") == "0":
        return None
    try:
        kernel = getattr(importlib.import_module(module), name)
    except Exception:  # ImportError, or Triton failing to initialise
        return None
    takes_layout = "head_first" in inspect.signature(kernel).parameters
    return functools.partial(kernel, head_first=False) if takes_layout else kernel


def fla_kernel():
    """fla's chunked RWKV-6 kernel, or None (see `fla_op`)."""
    return fla_op("fla.ops.rwkv6", "chunk_rwkv6")


def wkv6_fla(kernel, r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None):
    """Our layout is fla's ([B,T,H,N], state [B,H,K,V], log-space decay); scale 1 (RWKV does not
    scale r·k). Inputs go in as fp32, as in the PyTorch path."""
    B, T, H, N = r.shape
    y, S = kernel(r.float(), k.float(), v.float(), log_w.float().clamp_min(LOG_DECAY_FLOOR), u.float(), scale=1.0,
                  initial_state=_initial_state(state, B, H, N, r.device), output_final_state=True)
    return y.float(), S.float()


def _initial_state(state, B, H, N, device):
    if state is None:
        return torch.zeros(B, H, N, N, dtype=torch.float32, device=device)
    if state.shape != (B, H, N, N):
        raise ValueError(f"WKV state has shape {tuple(state.shape)}, expected {(B, H, N, N)}")
    return state.float()
