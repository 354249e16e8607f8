"""Next-token sampling with the RWKV conventions (SPEC §9.3, `rwkv.utils.PIPELINE`).

Per step and per sequence: repetition penalties → softmax in fp32 → top-p cutoff (ties kept) →
top-k → temperature as probs^(1/T) after truncation → draw. Temperature 0 is greedy: the argmax
(the lowest id among exact ties, where the official code would draw among the tied tokens). So is
any temperature below `GREEDY_BELOW` (1e-5, vLLM's rule too): such a T is 0 in float32 or divides
log-probabilities into infinities, and the distribution it stands for is the argmax anyway.

Batching never changes a sequence's tokens: every row is computed independently and draws its
random number from its own `torch.Generator`, so a seeded request gives the same tokens whether it
runs alone or beside others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from visualrwkv.engine.params import GREEDY_BELOW, MAX_ABS_PENALTY, MAX_SEED, MAX_TEMPERATURE, SamplingParams  # noqa: F401

# tokens whose text is one of these add 0 (not 1) to their occurrence count (SPEC §9.3): the
# official code does not want to discourage spacing and numbers
ZERO_WEIGHT_TOKEN_TEXTS = frozenset([b" ", b"\t", *(str(d).encode() for d in range(10))])

@dataclass
class SamplingRow:
    """The sampling state of one sequence: its params, occurrence counts and random generator."""

    params: SamplingParams
    generator: torch.Generator
    occurrence: dict[int, float] = field(default_factory=dict)

    @classmethod
    def create(cls, params: SamplingParams) -> "SamplingRow":
        generator = torch.Generator()  # CPU: the same draws on every device
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        return cls(params=params, generator=generator)


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """fp32 copy of `logits` [B, V] with logit[n] -= presence + occurrence[n] * frequency per row.

    Every token already generated pays the presence penalty, even when its count is 0.
    """
    out = logits.to(torch.float32, copy=True)
    for b, row in enumerate(rows):
        if not row.occurrence:
            continue
        p = row.params
        ids = torch.tensor(list(row.occurrence.keys()), dtype=torch.long)
        counts = torch.tensor(list(row.occurrence.values()), dtype=torch.float32)
        penalty = p.presence_penalty + counts * p.frequency_penalty
        out[b, ids.to(out.device)] -= penalty.to(out.device)
    return out


# Sorting the whole vocabulary costs ~10 ms per row on a CPU, while the top-p/top-k cut usually
# falls within the most probable few hundred tokens. So candidates are found with topk(), in growing
# sets, and only rows whose cut lies beyond them all (or whose candidate boundary ties) pay for the
# full sort. Each level keeps exactly the set the full sort would.
CANDIDATE_LEVELS = (1024, 8192)


def _stable_descending(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder (values, ids) rows by value descending, ties by id ascending: the full sort's order."""
    by_id = torch.argsort(ids, dim=-1)
    values, ids = values.gather(-1, by_id), ids.gather(-1, by_id)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    return values.gather(-1, order), ids.gather(-1, order)


def _keep_sorted(sorted_probs: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor):
    """(keep mask over the sorted order, whether the top-p mass was reached) per row.

    top-p: the cutoff is the probability at which the cumulative mass first reaches top_p; every
    token at least that probable is kept, ties included. top_p = 1 keeps everything, and so does a
    row that never reaches top_p (rounding can leave the total a hair under 1), where the official
    code would keep only the top token: surely not what top_p near 1 means. Then top-k keeps the
    first k.
    """
    reached = torch.cumsum(sorted_probs, dim=-1) >= top_p[:, None]
    any_reached = reached.any(dim=-1)
    first = reached.to(torch.int8).argmax(dim=-1)
    cutoff = sorted_probs.gather(-1, first[:, None])
    apply_p = (top_p < 1.0) & any_reached
    keep = (sorted_probs >= cutoff) | ~apply_p[:, None]
    positions = torch.arange(sorted_probs.shape[-1], device=sorted_probs.device)
    keep &= positions[None, :] < top_k[:, None]
    return keep, any_reached


def _keep_mask(probs: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Bool [B, V]: the tokens that survive top-p then top-k (top_k already mapped 0 → V)."""
    batch, vocab = probs.shape
    keep = torch.ones_like(probs, dtype=torch.bool)
    truncate_p, truncate_k = top_p < 1.0, top_k < vocab
    rows = torch.nonzero(truncate_p | truncate_k).flatten()
    if rows.numel() == 0:
        return keep
    sub, sub_p, sub_k = probs[rows], top_p[rows], top_k[rows]
    done = torch.zeros(rows.numel(), dtype=torch.bool, device=probs.device)

    for level in CANDIDATE_LEVELS:
        pending = torch.nonzero(~done).flatten()
        n = level + 1  # one more than the candidates, to see whether the boundary ties
        if n >= vocab or pending.numel() == 0:
            break
        values, ids = _stable_descending(*torch.topk(sub[pending], n, dim=-1))
        head_keep, reached = _keep_sorted(values[:, :-1], sub_p[pending], sub_k[pending])
        clean_boundary = values[:, -2] > values[:, -1]
        ok = clean_boundary & torch.where(truncate_p[rows[pending]], reached, sub_k[pending] <= level)
        if ok.any():
            mask = torch.zeros(int(ok.sum()), vocab, dtype=torch.bool, device=probs.device)
            keep[rows[pending[ok]]] = mask.scatter_(-1, ids[ok, :-1], head_keep[ok])
            done[pending[ok]] = True

    rest = torch.nonzero(~done).flatten()
    if rest.numel():
        values, ids = torch.sort(sub[rest], dim=-1, descending=True, stable=True)
        sorted_keep, _ = _keep_sorted(values, sub_p[rest], sub_k[rest])
        keep[rows[rest]] = torch.zeros_like(sorted_keep).scatter_(-1, ids, sorted_keep)
    return keep


def _sampling_weights(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Unnormalised weights [B, V] of the next-token distribution of non-greedy rows."""
    batch, vocab = logits.shape
    device = logits.device
    probs = torch.softmax(logits, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
    keep = _keep_mask(probs, top_p, top_k)

    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)[:, None]
    # probs^(1/T) computed as exp((log p - log p_max) / T): the same distribution after
    # normalisation, without underflow to all-zeros at small T
    log_probs = torch.log(probs)
    tempered = torch.exp((log_probs - log_probs.max(dim=-1, keepdim=True).values) / temperature)
    weights = torch.where(temperature == 1.0, probs, tempered)
    return torch.where(keep, weights, torch.zeros_like(weights))


def sampling_distribution(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution [B, V] that `Sampler.sample` draws from, given already-penalised logits."""
    _check_logits(logits, len(params))
    logits = logits.to(torch.float32)
    out = torch.zeros_like(logits)
    greedy = [b for b, p in enumerate(params) if p.greedy]
    if greedy:
        idx = torch.tensor(greedy, device=logits.device)
        out[idx, logits[idx].argmax(dim=-1)] = 1.0
    sampled = [b for b, p in enumerate(params) if not p.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        weights = _sampling_weights(logits[idx], [params[b] for b in sampled])
        out[idx] = weights / weights.sum(dim=-1, keepdim=True)
    return out


def _check_logits(logits: torch.Tensor, batch: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor [B, V], got {getattr(logits, 'shape', type(logits))}")
    if logits.shape[0] != batch:
        raise ValueError(f"logits has {logits.shape[0]} rows but {batch} sampling rows were given")
    if logits.shape[1] == 0:
        raise ValueError("logits has an empty vocabulary dimension")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")


def _check_weights(weights: torch.Tensor, rows: Sequence[int]) -> None:
    total = weights.sum(dim=-1)
    bad = torch.nonzero(~(torch.isfinite(total) & (total > 0))).flatten().tolist()
    if bad:
        raise ValueError(f"row {rows[bad[0]]}: no next token has a finite positive weight (infinite logits?)")


class Sampler:
    """Picks next tokens for a batch of sequences and keeps their occurrence counts."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        """`token_bytes`: id → bytes of that token, e.g. `Tokenizer().token_bytes`."""
        self._token_bytes = token_bytes

    def new_row(self, params: SamplingParams) -> SamplingRow:
        return SamplingRow.create(params)

    def record(self, row: SamplingRow, token: int) -> None:
        """Decay every count, then count `token` (1, or 0 for a space, tab or single digit)."""
        decay = row.params.penalty_decay
        for t in row.occurrence:
            row.occurrence[t] *= decay
        weight = 0.0 if self._token_bytes(token) in ZERO_WEIGHT_TOKEN_TEXTS else 1.0
        row.occurrence[token] = row.occurrence.get(token, 0.0) + weight

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow], *, record: bool = True) -> list[int]:
        """Next token of every row from `logits` [B, V]; with `record`, also count it in the row."""
        _check_logits(logits, len(rows))
        penalised = apply_penalties(logits, rows)
        tokens: list[int | None] = [None] * len(rows)

        greedy = [b for b, row in enumerate(rows) if row.params.greedy]
        if greedy:
            picks = penalised[torch.tensor(greedy, device=penalised.device)].argmax(dim=-1).tolist()
            for b, t in zip(greedy, picks):
                tokens[b] = t

        sampled = [b for b, row in enumerate(rows) if not row.params.greedy]
        if sampled:
            idx = torch.tensor(sampled, device=penalised.device)
            weights = _sampling_weights(penalised[idx], [rows[b].params for b in sampled])
            _check_weights(weights, sampled)  # before any draw: a failed call changes no row's generator
            cdf = torch.cumsum(weights, dim=-1)
            uniforms = torch.cat([torch.rand(1, generator=rows[b].generator) for b in sampled])
            target = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
            # right=True: a zero-weight token has no width in the cdf, so it is never picked; the
            # clamp guards the rounding case u * total == total
            pos = torch.searchsorted(cdf, target, right=True)
            positions = torch.arange(weights.shape[-1], device=weights.device)
            last_kept = torch.where(weights > 0, positions, -1).max(dim=-1, keepdim=True).values
            picks = torch.minimum(pos, last_kept).squeeze(-1).tolist()
            for b, t in zip(sampled, picks):
                tokens[b] = t

        if record:
            for row, t in zip(rows, tokens):
                self.record(row, t)
        return tokens  # type: ignore[return-value]
