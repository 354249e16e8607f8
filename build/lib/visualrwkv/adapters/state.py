"""RWKV state tuning: a trained initial recurrent state, applied before every prompt.

An RNN's whole memory of the past is its state, so a learned starting state acts like a learned
prompt of unbounded length, at no cost per token: the WKV matrix of every layer (and, optionally,
the two token-shift vectors) is a parameter, trained with every weight frozen (RWKV-PEFT's state
tuning). At zero it is the base model exactly (a zero state is what a fresh sequence starts from).

A state file is a small safetensors file: `wkv` [L, H, N, N] fp32 (in the layout `RWKVState` holds,
per layer) and, with shifts, `att_shift` and `ffn_shift` [L, C]; its metadata names the sizes it was
trained for, checked on load. `VisualRWKV.state_tuning` holds it; the model's `prefill` (which the
engine and every command use) starts a prompt from it instead of zeros, and the engine's prefix
cache keys carry its digest (`VisualRWKV.cache_tag`), so two state files never share a cached prefix.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..rwkv.model import RWKVConfig, RWKVState
from ..utils import atomic_save_file

STATE_FORMAT = "visualrwkv-state"


class StateTuning(nn.Module):
    """The trainable initial state of every layer; `initial(B)` is it as an `RWKVState` of B rows."""

    def __init__(self, config: RWKVConfig, shifts: bool = False):
        super().__init__()
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        self.sizes = {"version": config.version, "n_layer": L, "n_embd": C, "head_size": N}
        self.wkv = nn.Parameter(torch.zeros(L, H, N, N))
        self.shifts = shifts
        if shifts:
            self.att_shift = nn.Parameter(torch.zeros(L, C))
            self.ffn_shift = nn.Parameter(torch.zeros(L, C))
        self._digest: tuple | None = None  # (tensor versions, digest): recomputed only after a change

    def initial(self, batch_size: int, dtype: torch.dtype) -> RWKVState:
        L, C = self.sizes["n_layer"], self.sizes["n_embd"]
        wkv = self.wkv.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)
        if self.shifts:
            att = self.att_shift.unsqueeze(1).expand(-1, batch_size, -1).to(dtype)
            ffn = self.ffn_shift.unsqueeze(1).expand(-1, batch_size, -1).to(dtype)
        else:
            att = ffn = torch.zeros(L, batch_size, C, device=self.wkv.device, dtype=dtype)
        return RWKVState(att, wkv, ffn)

    def tensors(self) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.named_parameters()}

    @property
    def digest(self) -> str:
        versions = tuple(p._version for p in self.parameters())
        if self._digest is None or self._digest[0] != versions:
            h = hashlib.sha256(json.dumps(self.sizes, sort_keys=True).encode())
            for name, t in sorted(self.tensors().items()):
                h.update(name.encode() + t.float().contiguous().cpu().numpy().tobytes())
            self._digest = (versions, h.hexdigest()[:16])
        return self._digest[1]


def save_state(path: str | os.PathLike, sizes: dict, tensors: dict[str, Tensor]) -> None:
    """Write a state file (atomically); `tensors` holds `wkv` and optionally both shifts."""
    data = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": STATE_FORMAT, **{k: str(v) for k, v in sizes.items()}}
    atomic_save_file(lambda tmp: save_file(data, tmp, metadata=metadata), path)


def load_state(path: str | os.PathLike, config: RWKVConfig) -> StateTuning:
    """A state file as a `StateTuning` for a model of `config`; one clear error if it is for another model."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--state {path}: no such file (a state file is what `visualrwkv train --config "
                                "finetune-state` writes, final/state.safetensors)")
    try:
        with safe_open(path, "pt") as f:
            metadata, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one line
        raise ValueError(f"--state {path}: not a safetensors file ({e})") from None
    if metadata.get("format") != STATE_FORMAT or "wkv" not in tensors:
        raise ValueError(f"--state {path}: not a visualrwkv state file")
    state = StateTuning(config, shifts="att_shift" in tensors)
    wanted = {k: str(v) for k, v in state.sizes.items()}
    found = {k: metadata.get(k) for k in wanted}
    own = dict(state.named_parameters())
    if found != wanted or set(tensors) != set(own) or any(own[k].shape != v.shape for k, v in tensors.items()):
        raise ValueError(f"--state {path}: made for a model of {found}, this one is {wanted}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)
    return state.requires_grad_(False)
