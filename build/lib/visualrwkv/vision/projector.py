"""Vision-feature -> LM-width projectors (SPEC §5.3), with the official state-dict key names.

Keys below are relative to the projector (the official checkpoint prefixes them with `proj.`):
- linear (v5/v6.0, v7 `linear`): `weight` [out, in], no bias, no norm (block 0's ln0 normalises).
- mlp (v7.00 released, context gating): out = LN_v(W_o·(x ⊙ σ(W_gate·x))); `gate.weight` [in, in],
  `o_proj.weight` [out, in], `ln_v.weight/bias` [out].
- hd (HD / UHD / v6.20): x' = W_p·x; out = W_o·(x' ⊙ σ(W_g·x')); `proj.weight` [hid, in],
  `gate.weight` [hid, hid], `o_proj.weight` [out, hid]; no norm.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_KINDS = ("linear", "mlp", "hd")


class LinearProjector(nn.Linear):
    kind = "linear"

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, bias=False)


class GatedMLPProjector(nn.Module):
    kind = "mlp"

    def __init__(self, in_dim: int, out_dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.gate = nn.Linear(in_dim, in_dim, bias=False)
        self.o_proj = nn.Linear(in_dim, out_dim, bias=False)
        self.ln_v = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_v(self.o_proj(x * torch.sigmoid(self.gate(x))))


class HDProjector(nn.Module):
    kind = "hd"

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.proj = nn.Linear(in_dim, hidden_dim, bias=False)
        self.gate = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.o_proj = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.o_proj(x * torch.sigmoid(self.gate(x)))


def build_projector(kind: str, in_dim: int, out_dim: int, **options) -> nn.Module:
    """A freshly initialised projector of `kind` ('linear', 'mlp' or 'hd')."""
    for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"projector {name} must be a positive int, got {value!r}")
    if kind == "linear":
        return LinearProjector(in_dim, out_dim, **options)
    if kind == "mlp":
        return GatedMLPProjector(in_dim, out_dim, **options)
    if kind == "hd":
        return HDProjector(in_dim, out_dim, **options)
    raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS}, got {kind!r}")


def infer_projector(state_dict: dict[str, torch.Tensor]) -> tuple[str, int, int, dict]:
    """(kind, in_dim, out_dim, options) of the projector whose weights are `state_dict`.

    Accepts keys relative to the projector or with the official `proj.` prefix.
    """
    state_dict = _strip_prefix(state_dict)
    keys = set(state_dict)
    if keys == {"weight"}:
        out_dim, in_dim = state_dict["weight"].shape
        return "linear", in_dim, out_dim, {}
    if keys == {"gate.weight", "o_proj.weight", "ln_v.weight", "ln_v.bias"}:
        out_dim, in_dim = state_dict["o_proj.weight"].shape
        return "mlp", in_dim, out_dim, {}
    if keys == {"proj.weight", "gate.weight", "o_proj.weight"}:
        hidden_dim, in_dim = state_dict["proj.weight"].shape
        out_dim = state_dict["o_proj.weight"].shape[0]
        return "hd", in_dim, out_dim, {"hidden_dim": hidden_dim}
    raise ValueError(
        f"cannot recognise a projector from keys {sorted(keys)}; expected {{weight}} (linear), "
        "{gate.weight, o_proj.weight, ln_v.weight, ln_v.bias} (mlp) or {proj.weight, gate.weight, o_proj.weight} (hd)"
    )


def projector_from_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build the projector `state_dict` describes and load it strictly (kept in float32)."""
    kind, in_dim, out_dim, options = infer_projector(state_dict)
    projector = build_projector(kind, in_dim, out_dim, **options)
    try:
        projector.load_state_dict(_strip_prefix(state_dict), strict=True)
    except RuntimeError as e:  # inconsistent shapes between the tensors
        raise ValueError(f"{kind} projector weights are inconsistent: {e}") from e
    return projector


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Relative hd keys also contain `proj.weight`, but never *only* `proj.`-prefixed keys, so
    # "every key starts with proj." unambiguously means the official prefix.
    if state_dict and all(k.startswith("proj.") for k in state_dict):
        return {k[len("proj.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)
