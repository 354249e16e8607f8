"""WKV7, the RWKV-7 time-mix recurrence (SPEC §3.1 step 8), in plain PyTorch.

A generalised delta rule with a diagonal-plus-low-rank transition. Layout as for WKV6 (fla's):
r, log_w, k, v, a, b are [B, T, H, N]; `log_w` is the log of the decay factor (≤ 0); the state S is
[B, H, N, N] indexed [batch, head, value i, key j] (the `rwkv` package's orientation, the transpose of
WKV6's), fp32. RWKV-7 passes a = −κ̂ and b = κ̂⊙(in-context rate). Per step the output reads the
updated state:

    S_t = S_{t−1} (diag(exp log_w_t) + a_t b_tᵀ) + v_t k_tᵀ;    y_t = S_t r_t

`wkv7` is the one dispatch point: the one-token step for a single token; on CUDA, the Triton kernel of
flash-linear-attention when it imports; the chunked form otherwise. Math runs in fp32 (float64 stays
float64, for checking gradients); outputs are in that dtype.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from .wkv6 import LOG_DECAY_FLOOR, SEGMENT, _exclusive_cumsum, fla_op

DEFAULT_CHUNK = 16


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _initial_state(state: Tensor | None, B: int, H: int, N: int, like: Tensor) -> Tensor:
    dtype = _work_dtype(like)
    if state is None:
        return torch.zeros(B, H, N, N, dtype=dtype, device=like.device)
    if state.shape != (B, H, N, N):
        raise ValueError(f"WKV state has shape {tuple(state.shape)}, expected {(B, H, N, N)}")
    return state.to(dtype)


def wkv7_recurrent(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None):
    """Token-by-token reference. Returns (y [B,T,H,N], final state [B,H,N,N])."""
    B, T, H, N = r.shape
    S = _initial_state(state, B, H, N, r)
    r, k, v, a, b = (x.to(S.dtype) for x in (r, k, v, a, b))
    w = log_w.to(S.dtype).exp()
    ys = []
    for t in range(T):
        S = (S * w[:, t, :, None, :] + (S @ a[:, t, :, :, None]) * b[:, t, :, None, :]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        ys.append((S @ r[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, dim=1), S


def wkv7_step(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor):
    """One token: every input [B,H,N]. Returns (y [B,H,N], new state); the input state is not modified."""
    dtype = state.dtype
    r, k, v, a, b = (x.to(dtype) for x in (r, k, v, a, b))
    sa = state @ a.unsqueeze(-1)  # [B,H,N(value),1]: the state read along a, before the decay
    new_state = state * log_w.to(dtype).exp().unsqueeze(-2)
    new_state = new_state.addcmul_(sa, b.unsqueeze(-2)).addcmul_(v.unsqueeze(-1), k.unsqueeze(-2))
    return (new_state @ r.unsqueeze(-1)).squeeze(-1), new_state


def wkv7_chunked(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
                 chunk_size: int = DEFAULT_CHUNK):
    """Parallel form over chunks, exact up to rounding for any decay in [exp(−20), 1] and any |a|, |b| ≲ 1.

    Inside a chunk that starts from S₀, let u_t = S_{t−1} a_t (what the low-rank part reads). Unrolled,
        u_t = S₀(a_t⊙e^{b̄_t}) + Σ_{s<t} [(a_t·(b_s ⊙ D_{s,t})) u_s + (a_t·(k_s ⊙ D_{s,t})) v_s],
    with D_{s,t} = exp(Σ_{s<m<t} log_w_m) ≤ 1: a unit lower-triangular system for all u of the chunk at
    once (one triangular solve, batched over chunks), whose solution is linear in S₀. The outputs and
    the chunk's final state are then linear in S₀ as well, so chunk to chunk the state is carried by one
    N×N product: S_end = S₀·M + E, with M and E computed for all chunks in parallel. Every decay factor
    is exp of a sum of log-decays over the tokens between two positions (≤ 1): nothing overflows, and
    the pair sums are built by halving as in WKV6 (`_pair_scores`).
    """
    if chunk_size < 2 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 2, got {chunk_size}")
    B, T, H, N = r.shape
    S = _initial_state(state, B, H, N, r)
    if T == 0:
        return r.new_zeros(B, 0, H, N, dtype=S.dtype), S
    C = min(chunk_size, 1 << max(1, (T - 1).bit_length()))  # short inputs get a short chunk
    ys = []
    for start in range(0, T, SEGMENT):
        part = (x[:, start:start + SEGMENT] for x in (r, log_w, k, v, a, b))
        y, S = _chunked_segment(*part, S, C)
        ys.append(y)
    return (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)), S


def _pair_factors(lw: Tensor) -> list[tuple[Tensor, Tensor]]:
    """For each halving level h = 1, 2, …, C/2 (blocks of 2h positions), the decays that take a pair
    (j in a block's first half, i in its second) through the block's midpoint:
    exp(Σ_{h≤m<i} λ) for the rows and exp(Σ_{j<m<h} λ) for the columns, both ≤ 1."""
    C = lw.shape[-2]
    factors, h = [], 1
    while h < C:
        halves = lw.unflatten(-2, (C // (2 * h), 2, h))  # [..., blocks, 2, h, N]
        factors.append((_exclusive_cumsum(halves[..., 1, :, :], dim=-2).exp(),
                        _exclusive_cumsum(halves[..., 0, :, :], dim=-2, reverse=True).exp()))
        h *= 2
    return factors


def _pair_scores(q: Tensor, p: Tensor, factors: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Every pairing of the rows of q [Q, ..., C, N] with those of p [P, ..., C, N]: [Q, P, ..., C, C] with
    Σ_d q_i[d] p_j[d] exp(Σ_{j<m<i} λ_m[d]) for j < i, zero on and above the diagonal.

    Built from the finest level up: two diagonal blocks of size h and the pairs that straddle their
    midpoint (one matmul over all such blocks) make a diagonal block of size 2h."""
    C = q.shape[-2]
    M = q.new_zeros(q.shape[0], p.shape[0], *q.shape[1:-2], C, 1, 1)  # C diagonal blocks of size 1
    h = 1
    for rows, cols in factors:
        split = (C // (2 * h), 2, h)
        q_h = q.unflatten(-2, split)[..., 1, :, :] * rows
        p_h = p.unflatten(-2, split)[..., 0, :, :] * cols
        cross = q_h.unsqueeze(1) @ p_h.unsqueeze(0).transpose(-1, -2)  # [Q, P, ..., blocks, h, h]
        halves = M.unflatten(-3, (C // (2 * h), 2))  # [Q, P, ..., blocks, 2, h, h]
        top = torch.cat([halves[..., 0, :, :], torch.zeros_like(cross)], dim=-1)
        bottom = torch.cat([cross, halves[..., 1, :, :]], dim=-1)
        M = torch.cat([top, bottom], dim=-2)
        h *= 2
    return M.squeeze(-3)


def _chunked_segment(r, log_w, k, v, a, b, S, C):
    B, T, H, N = r.shape
    pad = (-T) % C

    # [B,T,H,N] -> [B,H,nC,C,N], zero-padded at the end; padded steps have log_w = 0 and k = v = a = b = 0:
    # an identity transition that changes neither the outputs kept nor the state.
    def chunks(x):
        x = x.to(S.dtype).transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, -1, C, N)

    r, k, v, a, b = (chunks(x) for x in (r, k, v, a, b))
    lw = chunks(log_w.to(S.dtype).clamp(min=LOG_DECAY_FLOOR))
    factors = _pair_factors(lw)
    rw = r * lw.exp()  # y_t reads S_t: the pairs s < t decay through t itself as well

    (A_ab, A_ak), (Q_b, Q_k) = _pair_scores(torch.stack([a, rw]), torch.stack([b, k]), factors)
    lower = torch.eye(C, dtype=S.dtype, device=S.device) - A_ab  # (I − A_ab) u = S₀-term + A_ak v
    W = torch.linalg.solve_triangular(lower, a * _exclusive_cumsum(lw, dim=3).exp(), upper=False, unitriangular=True)
    U_local = torch.linalg.solve_triangular(lower, A_ak @ v, upper=False, unitriangular=True)
    # u = W S₀ᵀ + U_local (rows of length N); outputs y = R S₀ᵀ + Y_local, the current token on the diagonal
    Q_b = Q_b + torch.diag_embed((r * b).sum(-1))
    Q_k = Q_k + torch.diag_embed((r * k).sum(-1))
    R = r * lw.cumsum(dim=3).exp() + Q_b @ W
    Y_local = Q_b @ U_local + Q_k @ v

    # the chunk's end state: S₀ diag(e^{Σλ}) + Σ_s (u_s b̃_sᵀ + v_s k̃_sᵀ), b̃, k̃ decayed to the chunk end
    tail = _exclusive_cumsum(lw, dim=3, reverse=True).exp()
    b_tail, k_tail = b * tail, k * tail
    M = torch.diag_embed(lw.sum(dim=3).exp()) + W.transpose(-1, -2) @ b_tail  # [B,H,nC,N(key),N(key)]
    E = U_local.transpose(-1, -2) @ b_tail + v.transpose(-1, -2) @ k_tail  # [B,H,nC,N(value),N(key)]
    starts = []
    for c in range(M.shape[2]):
        starts.append(S)
        S = S @ M[:, :, c] + E[:, :, c]
    S_start = torch.stack(starts, dim=2)  # [B,H,nC,N,N]

    y = R @ S_start.transpose(-1, -2) + Y_local
    y = y.reshape(B, H, -1, N)[:, :, :T].transpose(1, 2)
    return y, S


def wkv7(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None):
    """Dispatch: returns (y [B,T,H,N], final state [B,H,N,N]), fp32 (float64 for float64 inputs)."""
    B, T, H, N = r.shape
    if T == 1:
        y, S = wkv7_step(r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], _initial_state(state, B, H, N, r))
        return y.unsqueeze(1), S
    if r.is_cuda and r.dtype != torch.float64 and (kernel := fla_kernel()) is not None:
        return wkv7_fla(kernel, r, log_w, k, v, a, b, state)
    return wkv7_chunked(r, log_w, k, v, a, b, state)


def fla_kernel():
    """fla's chunked RWKV-7 kernel, or None (see `wkv6.fla_op`)."""
    return fla_op("fla.ops.rwkv7", "chunk_rwkv7")


def wkv7_fla(kernel, r, log_w, k, v, a, b, state=None):
    """fla's `chunk_rwkv7` takes our [B,T,H,N] layout, scale 1; its state is [B,H,key,value], the transpose
    of ours. The log-decay goes in by name: `w` in most fla versions, `log_w` in those where `w` is the
    pre-exponential value; so every input goes in by name."""
    B, T, H, N = r.shape
    S0 = _initial_state(state, B, H, N, r).transpose(-1, -2).contiguous()
    target = kernel.func if isinstance(kernel, functools.partial) else kernel
    decay_name = "log_w" if "log_w" in inspect.signature(target).parameters else "w"
    y, S = kernel(r=r.float(), k=k.float(), v=v.float(), a=a.float(), b=b.float(),
                  **{decay_name: log_w.float().clamp_min(LOG_DECAY_FLOOR)}, scale=1.0,
                  initial_state=S0, output_final_state=True)
    return y.float(), S.float().transpose(-1, -2)
