"""Reduced precision where it is cheap, fp32 where it matters: the one policy behind every `--dtype`.

In every reduced mode (bfloat16, float16, int8, int4) only the large matrices of the language model
are stored reduced: every linear layer (the projections, the FFN, the head) and the embedding rows.
These are nearly all the bytes a decoding step reads. Everything else stays fp32: every 1-D tensor,
the token-shift mixes, the decay and mixing LoRAs (raw parameters, not linear layers, in both RWKV
generations), the bonus, the norms. So do the recurrent state and the activations: products of a
few rows widen the weights and compute in fp32 (`ops.linear`, `ops.quant`).

Why: casting every tensor to bf16 (what `model.to(torch.bfloat16)` does) rounds the decays, the
bonus and the LoRAs, and with them every token's state update. With only the large matrices rounded
the logits drift several times less from fp32 (docs/benchmarks.md), at the same bytes per token.

Which modules count is decided by type (`Linear`/`nn.Linear`, `nn.Embedding` and their quantized
forms), so the rule applies to any kind of block without a list of names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.linear import Linear
from ..ops.quant import GROUP_SIZE, QuantizedEmbedding, QuantizedLinear

FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = {"int8": 8, "int4": 4}
PRECISIONS = tuple(FLOAT_DTYPES) + tuple(QUANTIZED)
_LARGE = (nn.Linear, nn.Embedding, QuantizedLinear, QuantizedEmbedding)
SCALES = "weight_scales"  # the key suffix that marks a quantized matrix in a state dict


def precision_name(precision: str | torch.dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' | 'int8' | 'int4' from a name or a torch float dtype."""
    if isinstance(precision, torch.dtype):
        names = {v: k for k, v in FLOAT_DTYPES.items()}
        if precision not in names:
            raise ValueError(f"dtype must be one of {PRECISIONS}, got {precision}")
        return names[precision]
    if precision not in PRECISIONS:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {precision!r}")
    return precision


def float_dtype(precision: str | torch.dtype) -> torch.dtype:
    """The float dtype of everything outside the LM's large matrices that follows --dtype (the vision
    tower, the projector): the dtype itself for a float precision, fp32 for int8/int4."""
    return FLOAT_DTYPES.get(precision_name(precision), torch.float32)


def large_matrices(lm: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every linear layer and embedding of `lm`."""
    return [(name, m) for name, m in lm.named_modules() if isinstance(m, _LARGE)]


def current_precision(lm: nn.Module) -> str:
    """The precision of `lm`'s large matrices ('mixed' where they disagree)."""
    kinds = set()
    for _, m in large_matrices(lm):
        kinds.add(f"int{m.bits}" if isinstance(m, (QuantizedLinear, QuantizedEmbedding)) else precision_name(m.weight.dtype))
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _replace(lm: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(lm.get_submodule(parent) if parent else lm, attribute, module)


def _float_module(m: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A float linear layer or embedding with m's values in `dtype` (dequantized if m is quantized)."""
    if isinstance(m, QuantizedLinear):
        layer = Linear(m.in_features, m.out_features, device="meta")
        # input-major, as the compiled decode products read a float linear layer (see RWKV.use_gemv_layout)
        layer.weight = nn.Parameter(m.dequantize(dtype).t().contiguous().t(), requires_grad=False)
        return layer
    if isinstance(m, QuantizedEmbedding):
        layer = nn.Embedding(m.num_embeddings, m.embedding_dim, device="meta")
        layer.weight = nn.Parameter(m.dequantize(dtype), requires_grad=False)
        return layer
    m.weight.data = m.weight.data.to(dtype)  # keeps the memory order
    return m


def _quantized_module(m: nn.Module, bits: int, group_size: int) -> nn.Module:
    if isinstance(m, (QuantizedLinear, QuantizedEmbedding)):
        if (m.bits, m.group_size) == (bits, group_size):
            return m
        raise ValueError(f"these weights are int{m.bits} already; quantize the float model to int{bits} instead "
                         "(requantizing compounds the rounding)")
    if isinstance(m, nn.Embedding):
        return QuantizedEmbedding.from_float(m.weight, bits, group_size)
    return QuantizedLinear.from_float(m.weight, bits, group_size)


@torch.no_grad()
def set_precision(lm: nn.Module, precision: str | torch.dtype, group_size: int = GROUP_SIZE) -> nn.Module:
    """Store `lm`'s large matrices in `precision` and everything else in fp32, in place; returns `lm`.

    From a float model any precision can be had; int8/int4 weights can become floats again
    (dequantized) but not the other integer format. Inference only: quantized layers have no gradient.
    """
    precision = precision_name(precision)
    large = large_matrices(lm)
    inside = {id(p) for _, m in large for p in (*m.parameters(), *m.buffers())}
    for module in lm.modules():
        for key, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is not None and t.is_floating_point() and id(t) not in inside and t.dtype != torch.float32:
                t.data = t.data.float()
    for name, m in large:
        if precision in QUANTIZED:
            new = _quantized_module(m, QUANTIZED[precision], group_size)
        else:
            new = _float_module(m, FLOAT_DTYPES[precision])
        if new is not m:
            _replace(lm, name, new.to(m.weight.device))
    return lm


def stored_state_dict(lm: nn.Module, dtype: str | torch.dtype | None = None, prefix: str = "") -> dict[str, Tensor]:
    """`lm.state_dict(prefix=...)` as it would be after `set_precision(lm, dtype)` with a float dtype, without
    changing `lm` (what `save_rwkv(..., dtype)` and `save_pretrained(dtype=...)` write); None: as it is."""
    sd = lm.state_dict(prefix=prefix)
    if dtype is None:
        return sd
    name = precision_name(dtype)
    if name in QUANTIZED:
        raise ValueError(f"to store {name} weights, quantize the model first (`visualrwkv quantize`, set_precision)")
    large = {f"{prefix}{n}.weight" for n, m in large_matrices(lm) if not isinstance(m, (QuantizedLinear, QuantizedEmbedding))}
    return {k: v.to(FLOAT_DTYPES[name] if k in large else torch.float32) if v.is_floating_point() and
            not k.endswith(SCALES) else v for k, v in sd.items()}


def quantization_info(lm: nn.Module) -> dict:
    """What a quantized checkpoint's metadata says about its format (informative: loading reads the tensors)."""
    quantized = [m for _, m in large_matrices(lm) if isinstance(m, (QuantizedLinear, QuantizedEmbedding))]
    return {"format": "visualrwkv-groupwise", "bits": sorted({m.bits for m in quantized}),
            "group_size": sorted({m.group_size for m in quantized}), "scales": "float16",
            "grouped_along": "the input dimension (embedding: the row)", "activations": "float32"}


def prepare_for_state_dict(lm: nn.Module, sd: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Give `lm` (freshly built, float) empty quantized layers wherever `sd` (its keys, no prefix) holds
    a quantized matrix (a `weight` of codes with its `weight_scales`), so that it loads strictly."""
    for name, m in large_matrices(lm):
        scales = sd.get(f"{name}.{SCALES}")
        if scales is None:
            continue
        codes = sd.get(f"{name}.weight")
        kind = {torch.int8: 8, torch.uint8: 4}.get(codes.dtype if codes is not None else None)
        if kind is None or scales.dim() != 2 or scales.shape[-1] == 0:
            raise ValueError(f"{source}: {name}.weight must hold int8 or packed uint8 codes beside its {SCALES}, "
                             f"got {None if codes is None else codes.dtype}")
        k = m.embedding_dim if isinstance(m, (nn.Embedding, QuantizedEmbedding)) else m.in_features
        if k % scales.shape[-1]:
            raise ValueError(f"{source}: {name}.{SCALES} has {scales.shape[-1]} groups per row, which do not divide {k}")
        group = k // scales.shape[-1]
        if isinstance(m, (nn.Embedding, QuantizedEmbedding)):
            new = QuantizedEmbedding(m.num_embeddings, m.embedding_dim, kind, group, device=m.weight.device)
        else:
            new = QuantizedLinear(m.in_features, m.out_features, kind, group, device=m.weight.device)
        _replace(lm, name, new)


def stored_precision(sd: dict[str, Tensor]) -> str | None:
    """'int8' / 'int4' for a state dict of quantized matrices, None for a float one."""
    bits = {8 if sd[k[: -len(SCALES)] + "weight"].dtype == torch.int8 else 4
            for k in sd if k.endswith("." + SCALES) and k[: -len(SCALES)] + "weight" in sd}
    if len(bits) > 1:
        return "mixed"
    return f"int{bits.pop()}" if bits else None


def float_shape(sd: dict[str, Tensor], key: str) -> tuple[int, ...]:
    """The shape `key` has in the float model: packed int4 codes hold two values a byte."""
    shape = tuple(sd[key].shape)
    if key.endswith(".weight") and sd[key].dtype == torch.uint8 and key[: -len("weight")] + SCALES in sd:
        shape = (*shape[:-1], 2 * shape[-1])
    return shape


def resolve(requested: str | torch.dtype | None, sd: dict[str, Tensor]) -> str:
    """The precision to run in: `requested`, or (None) the stored quantization, else float32."""
    if requested is None:
        stored = stored_precision(sd)
        return stored if stored in QUANTIZED else "float32"
    return precision_name(requested)


__all__ = ["PRECISIONS", "set_precision", "stored_state_dict", "quantization_info", "current_precision", "precision_name", "float_dtype",
           "large_matrices", "prepare_for_state_dict", "stored_precision", "resolve", "float_shape"]
