"""The official VisualRWKV-7.00 vision weights <-> our HF-class stack (SPEC §4.5, §5.2, §5.6).

The official checkpoint holds three featurizers under `vit.`:
- `dino_featurizer.*`: timm ViT (DINOv2 with 4 registers, LayerScale, `no_embed_class`: the position
  table covers the patches only) -> HF `Dinov2WithRegistersModel`;
- `siglip_featurizer.*`: timm ViT without a class token (SO400M) -> HF `SiglipVisionModel`; timm's
  unused `attn_pool` head, when present, becomes HF's (equally unused) `head`;
- `sam_featurizer.*`: the original segment_anything `ImageEncoderViT` with its neck -> HF
  `SamVisionModel` (the 2x2 space-to-depth has no weights).

One table per encoder (`RULES`) says which official tensors make which HF tensors; import and export
both read it, so the two directions cannot drift apart. A rule joins or splits tensors: timm's fused
`attn.qkv` becomes HF's q/k/v; timm's `pos_embed` gains HF's class-token slot as a zero row (timm adds
no position to the class token); the stored 448-px tables are used as they are, never resampled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from .encoders import VisionConfig

Tensors = dict[str, torch.Tensor]

# Prefix of each component inside `vit.`, in the official naming.
PREFIXES = {"dinov2": "dino_featurizer.", "siglip": "siglip_featurizer.", "sam": "sam_featurizer."}
# Head counts of the released towers (shapes cannot tell them); other widths get 64-d heads.
KNOWN_HEADS = {"dinov2": {1024: 16}, "siglip": {1152: 16}}


class OfficialV7Error(ValueError):
    """Official v7.00 vision weights that do not fit the table or the model."""


@dataclass(frozen=True)
class Rule:
    """Official tensors `official` (templates with `{i}` = block index) <-> HF tensors `hf`."""

    official: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: list(ts)
    to_official: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: list(ts)


def _same(official: str, hf: str) -> Rule:
    return Rule((official,), (hf,))


def _split3(ts):
    return list(ts[0].chunk(3, dim=0))


def _join(ts):
    return [torch.cat(ts, dim=0)]


def _qkv(official_qkv: str, hf_q: str, hf_k: str, hf_v: str) -> Rule:
    """timm's fused qkv rows are [q; k; v]."""
    return Rule((official_qkv,), (hf_q, hf_k, hf_v), _split3, _join)


def _with_class_slot(ts):
    (table,) = ts
    return [torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)]


def _without_class_slot(ts):
    (table,) = ts
    if torch.count_nonzero(table[:, 0]):
        raise OfficialV7Error("DINOv2 position_embeddings has a non-zero class-token row; the official timm "
                              "layout (no_embed_class) cannot store it")
    return [table[:, 1:]]


def _linear_pair(prefix: str, hf: str) -> list[Rule]:
    return [_same(f"{prefix}.weight", f"{hf}.weight"), _same(f"{prefix}.bias", f"{hf}.bias")]


def _dinov2_rules() -> list[Rule]:
    block, layer = "blocks.{i}.", "encoder.layer.{i}."
    rules = [
        _same("cls_token", "embeddings.cls_token"),
        _same("reg_token", "embeddings.register_tokens"),
        Rule(("pos_embed",), ("embeddings.position_embeddings",), _with_class_slot, _without_class_slot),
        *_linear_pair("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        *_linear_pair("norm", "layernorm"),
    ]
    per_block = [
        *_linear_pair("norm1", "norm1"),
        _qkv("attn.qkv.weight", "attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"),
        _qkv("attn.qkv.bias", "attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"),
        *_linear_pair("attn.proj", "attention.o_proj"),
        _same("ls1.gamma", "layer_scale1.lambda1"),
        *_linear_pair("norm2", "norm2"),
        *_linear_pair("mlp.fc1", "mlp.fc1"),
        *_linear_pair("mlp.fc2", "mlp.fc2"),
        _same("ls2.gamma", "layer_scale2.lambda1"),
    ]
    return rules + [_prefixed(r, block, layer) for r in per_block]


def _siglip_rules() -> list[Rule]:
    block, layer = "blocks.{i}.", "encoder.layers.{i}."
    rules = [
        *_linear_pair("patch_embed.proj", "embeddings.patch_embedding"),
        Rule(("pos_embed",), ("embeddings.position_embedding.weight",), lambda ts: [ts[0][0]],
             lambda ts: [ts[0][None]]),
        *_linear_pair("norm", "post_layernorm"),
        # timm's attention-pool head (unused by VisualRWKV) <-> HF's: q and kv are one in_proj in HF.
        _same("attn_pool.latent", "head.probe"),
        Rule(("attn_pool.q.weight", "attn_pool.kv.weight"), ("head.attention.in_proj_weight",), _join,
             lambda ts: [ts[0][: ts[0].shape[1]], ts[0][ts[0].shape[1]:]]),
        Rule(("attn_pool.q.bias", "attn_pool.kv.bias"), ("head.attention.in_proj_bias",), _join,
             lambda ts: [ts[0][: ts[0].shape[0] // 3], ts[0][ts[0].shape[0] // 3:]]),
        *_linear_pair("attn_pool.proj", "head.attention.out_proj"),
        *_linear_pair("attn_pool.norm", "head.layernorm"),
        *_linear_pair("attn_pool.mlp.fc1", "head.mlp.fc1"),
        *_linear_pair("attn_pool.mlp.fc2", "head.mlp.fc2"),
    ]
    per_block = [
        *_linear_pair("norm1", "layer_norm1"),
        _qkv("attn.qkv.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        _qkv("attn.qkv.bias", "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
        *_linear_pair("attn.proj", "self_attn.out_proj"),
        *_linear_pair("norm2", "layer_norm2"),
        *_linear_pair("mlp.fc1", "mlp.fc1"),
        *_linear_pair("mlp.fc2", "mlp.fc2"),
    ]
    return rules + [_prefixed(r, block, layer) for r in per_block]


def _sam_rules() -> list[Rule]:
    block, layer = "blocks.{i}.", "vision_encoder.layers.{i}."
    rules = [
        *_linear_pair("patch_embed.proj", "vision_encoder.patch_embed.projection"),
        _same("pos_embed", "vision_encoder.pos_embed"),
        # the neck is an nn.Sequential in SAM: 0 = 1x1 conv, 1 = LayerNorm2d, 2 = 3x3 conv, 3 = LayerNorm2d
        _same("neck.0.weight", "vision_encoder.neck.conv1.weight"),
        *_linear_pair("neck.1", "vision_encoder.neck.layer_norm1"),
        _same("neck.2.weight", "vision_encoder.neck.conv2.weight"),
        *_linear_pair("neck.3", "vision_encoder.neck.layer_norm2"),
    ]
    per_block = [
        *_linear_pair("norm1", "layer_norm1"),
        *_linear_pair("attn.qkv", "attn.qkv"),  # fused in both
        *_linear_pair("attn.proj", "attn.proj"),
        _same("attn.rel_pos_h", "attn.rel_pos_h"),
        _same("attn.rel_pos_w", "attn.rel_pos_w"),
        *_linear_pair("norm2", "layer_norm2"),
        *_linear_pair("mlp.lin1", "mlp.lin1"),
        *_linear_pair("mlp.lin2", "mlp.lin2"),
    ]
    return rules + [_prefixed(r, block, layer) for r in per_block]


def _prefixed(rule: Rule, official_prefix: str, hf_prefix: str) -> Rule:
    return Rule(tuple(official_prefix + k for k in rule.official), tuple(hf_prefix + k for k in rule.hf),
                rule.to_hf, rule.to_official)


RULES = {"dinov2": _dinov2_rules(), "siglip": _siglip_rules(), "sam": _sam_rules()}
# HF tensors with no official counterpart: filled on import, dropped on export.
HF_ONLY = {"dinov2": {"embeddings.mask_token": "zeros"}}  # used only with bool_masked_pos, never here


def _expand(rules: list[Rule], depth: int) -> list[Rule]:
    out = []
    for rule in rules:
        if "{i}" in rule.official[0]:
            out += [Rule(tuple(k.format(i=i) for k in rule.official), tuple(k.format(i=i) for k in rule.hf),
                         rule.to_hf, rule.to_official) for i in range(depth)]
        else:
            out.append(rule)
    return out


def _depth(state_dict: Tensors) -> int:
    ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if ids != set(range(len(ids))):
        raise OfficialV7Error(f"block indices are not 0..n-1: {sorted(ids)[:8]}")
    return len(ids)


# ---- which parts are present, and their configs from shapes ------------------------------------
def split_components(vit_sd: Tensors) -> dict[str, Tensors]:
    """`vit.`-relative official keys -> {component: its keys without the featurizer prefix}.
    Raises naming the first key that belongs to no featurizer, or a missing featurizer."""
    parts: dict[str, Tensors] = {name: {} for name in PREFIXES}
    for key, value in vit_sd.items():
        name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
        if name is None:
            raise OfficialV7Error(f"unexpected v7.00 vision key 'vit.{key}' (expected vit.dino_featurizer.*, "
                                  "vit.siglip_featurizer.* or vit.sam_featurizer.*)")
        parts[name][key[len(PREFIXES[name]):]] = value
    missing = [f"vit.{PREFIXES[n]}*" for n, sd in parts.items() if not sd]
    if missing:
        raise OfficialV7Error(f"the v7.00 vision stack needs all three featurizers; missing {missing}")
    return parts


def is_official_v7(vit_sd: Tensors) -> bool:
    return any(key.startswith(tuple(PREFIXES.values())) for key in vit_sd)


def _shape(sd: Tensors, key: str, name: str) -> tuple[int, ...]:
    if key not in sd:
        raise OfficialV7Error(f"missing official key 'vit.{PREFIXES[name]}{key}'")
    return tuple(sd[key].shape)


def _heads(name: str, hidden: int) -> int:
    heads = KNOWN_HEADS.get(name, {}).get(hidden, max(1, hidden // 64))
    if hidden % heads:
        raise OfficialV7Error(f"{name}: width {hidden} is not divisible by {heads} heads")
    return heads


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise OfficialV7Error(f"{what} has {count} positions, not a square grid")
    return side


def dinov2_config(sd: Tensors) -> dict:
    hidden = _shape(sd, "cls_token", "dinov2")[-1]
    patch = _shape(sd, "patch_embed.proj.weight", "dinov2")[-1]
    side = _square_side(_shape(sd, "pos_embed", "dinov2")[1], "vit.dino_featurizer.pos_embed")
    inter = _shape(sd, "blocks.0.mlp.fc1.weight", "dinov2")[0]
    if inter % hidden:  # HF's config takes an integer mlp_ratio
        raise OfficialV7Error(f"DINOv2 MLP width {inter} is not a multiple of the width {hidden}")
    return dict(hidden_size=hidden, num_hidden_layers=_depth(sd), num_attention_heads=_heads("dinov2", hidden),
                mlp_ratio=inter // hidden, image_size=side * patch, patch_size=patch,
                num_register_tokens=_shape(sd, "reg_token", "dinov2")[1], layer_norm_eps=1e-6, hidden_act="gelu")


def siglip_config(sd: Tensors) -> dict:
    patch_shape = _shape(sd, "patch_embed.proj.weight", "siglip")
    hidden, patch = patch_shape[0], patch_shape[-1]
    side = _square_side(_shape(sd, "pos_embed", "siglip")[1], "vit.siglip_featurizer.pos_embed")
    return dict(hidden_size=hidden, num_hidden_layers=_depth(sd), num_attention_heads=_heads("siglip", hidden),
                intermediate_size=_shape(sd, "blocks.0.mlp.fc1.weight", "siglip")[0], image_size=side * patch,
                # timm builds this model with exact GELU (nn.GELU), not SigLIP's original tanh form
                patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu",
                vision_use_head="attn_pool.latent" in sd)


def sam_config(sd: Tensors) -> dict:
    patch_shape = _shape(sd, "patch_embed.proj.weight", "sam")
    hidden, patch = patch_shape[0], patch_shape[-1]
    side = _shape(sd, "pos_embed", "sam")[1]
    depth = _depth(sd)
    rel = [_shape(sd, f"blocks.{i}.attn.rel_pos_h", "sam") for i in range(depth)]
    head_dim = rel[0][1]
    # a global block's relative table spans the whole grid (2S-1 rows), a windowed one its window (2w-1)
    global_blocks = [i for i, shape in enumerate(rel) if shape[0] == 2 * side - 1]
    windows = {(shape[0] + 1) // 2 for i, shape in enumerate(rel) if i not in global_blocks}
    if len(windows) > 1:
        raise OfficialV7Error(f"SAM blocks use several window sizes {sorted(windows)}")
    return dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=hidden // head_dim,
                image_size=side * patch, patch_size=patch, mlp_dim=_shape(sd, "blocks.0.mlp.lin1.weight", "sam")[0],
                output_channels=_shape(sd, "neck.0.weight", "sam")[0], window_size=windows.pop() if windows else 0,
                global_attn_indexes=global_blocks, use_rel_pos=True, use_abs_pos=True, layer_norm_eps=1e-6,
                qkv_bias="blocks.0.attn.qkv.bias" in sd)


CONFIGS = {"dinov2": dinov2_config, "siglip": siglip_config, "sam": sam_config}


def stack_config(vit_sd: Tensors, dtype: str = "float32") -> VisionConfig:
    """The VisionConfig of the stack whose official weights are `vit_sd` (keys relative to `vit.`)."""
    parts = split_components(vit_sd)
    return VisionConfig("stack", dtype=dtype, **{name: VisionConfig(name, hf_config=CONFIGS[name](sd), dtype=dtype)
                                                 for name, sd in parts.items()})


# ---- the two directions ----------------------------------------------------------------------
def to_hf(name: str, official: Tensors, own: Tensors) -> Tensors:
    """One component's official tensors (prefix dropped) -> its HF state dict, checked against `own`
    (the HF model's state dict) key by key and shape by shape."""
    where = f"vit.{PREFIXES[name]}"
    rules = _expand(RULES[name], _depth(official))
    out: Tensors = {}
    used: set[str] = set()
    for rule in rules:
        present = [k in official for k in rule.official]
        if not any(present) and not any(k in own for k in rule.hf):
            continue  # an optional part absent on both sides (e.g. SigLIP's unused head)
        if not all(present):
            missing = [k for k, p in zip(rule.official, present) if not p]
            raise OfficialV7Error(f"missing official key '{where}{missing[0]}'")
        for key, value in zip(rule.hf, rule.to_hf([official[k] for k in rule.official])):
            if key not in own:
                raise OfficialV7Error(f"official key '{where}{rule.official[0]}' has no place in the model ({key})")
            if tuple(value.shape) != tuple(own[key].shape):
                raise OfficialV7Error(f"'{where}{rule.official[0]}' has shape {tuple(official[rule.official[0]].shape)}"
                                      f", which gives {key} {tuple(value.shape)}; the model expects {tuple(own[key].shape)}")
            out[key] = value
        used.update(rule.official)
    unexpected = sorted(set(official) - used)
    if unexpected:
        raise OfficialV7Error(f"unexpected official key '{where}{unexpected[0]}'"
                              + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for key, fill in HF_ONLY.get(name, {}).items():
        if key in own:
            out[key] = torch.zeros_like(own[key], device="cpu") if fill == "zeros" else own[key]
    missing = sorted(k for k in set(own) - set(out) if not k.endswith("position_ids"))
    if missing:
        raise OfficialV7Error(f"{name}: the official weights leave {missing[:4]} unset")
    return out


def to_official(name: str, hf: Tensors) -> Tensors:
    """One component's HF state dict -> the official tensors (without the featurizer prefix)."""
    depth = len({m.group(1) for k in hf if (m := re.search(r"layers?\.(\d+)\.", k))})
    out: Tensors = {}
    for rule in _expand(RULES[name], depth):
        if not all(k in hf for k in rule.hf):
            if any(k in hf for k in rule.hf):
                raise OfficialV7Error(f"{name}: {rule.hf} are only partly present")
            continue
        out.update(zip(rule.official, rule.to_official([hf[k] for k in rule.hf])))
    return {k: v.contiguous() for k, v in out.items()}


def load_official_stack(stack, vit_sd: Tensors) -> None:
    """Load official v7.00 `vit.*` weights (keys relative to `vit.`) into a StackEncoder, strictly."""
    parts = split_components(vit_sd)
    for name, official in parts.items():
        model = getattr(stack, name).hf_model
        own = model.state_dict()
        model.load_state_dict(to_hf(name, official, own), strict=False)


def official_stack_state_dict(stack) -> Tensors:
    """A StackEncoder's weights in the official layout, keys relative to `vit.`."""
    out: Tensors = {}
    for name, part in stack.components():
        hf = {k: v for k, v in part.hf_model.state_dict().items() if not k.endswith("position_ids")}
        out.update({PREFIXES[name] + k: v for k, v in to_official(name, hf).items()})
    return out


# ---- whole checkpoints ---------------------------------------------------------------------------
def import_v7(rwkv_config, lm_sd: Tensors, proj_sd: Tensors, vit_sd: Tensors, source: str):
    """A VisualRWKV-7.00 model from an official checkpoint's parts (prefixes `rwkv.`/`proj.`/`vit.`
    dropped): the stack from the featurizers' shapes, the projector (mlp or linear) from its keys,
    v7.00's unidirectional scanning and image-first prompts (SPEC §6, §7.4)."""
    from ..model import VisualRWKV, VisualRWKVConfig, _load_strict
    from ..rwkv.checkpoint import CheckpointError
    from .projector import infer_projector

    try:
        kind, in_dim, _, _ = infer_projector(proj_sd)
        config = VisualRWKVConfig(rwkv=rwkv_config, vision=stack_config(vit_sd), projector=kind,
                                  scanning="unidirection", image_position="first")
        model = VisualRWKV(config)
        if model.vit.hidden_size != in_dim:
            raise OfficialV7Error(f"the projector takes {in_dim}-d features, the three featurizers give "
                                  f"{model.vit.hidden_size}")
        load_official_stack(model.vit, vit_sd)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    _load_strict(model.rwkv, lm_sd, source + " (rwkv.)")
    _load_strict(model.proj, proj_sd, source + " (proj.)")
    return model


def official_state_dict(model, dtype: torch.dtype | None = None) -> Tensors:
    """A VisualRWKV (v6.0 CLIP or v7.00 stack) as the official full checkpoint: `rwkv.*`, `proj.*`, `vit.*`
    in the official names; every float tensor in `dtype` (the official files are all one dtype) or, with
    None, in the dtype it has here. A quantized LM cannot be exported."""
    from ..rwkv import precision
    from .hf_encoders import ClipEncoder
    from .stack import StackEncoder

    if precision.current_precision(model.rwkv) in precision.QUANTIZED:
        raise ValueError("a quantized language model has no official layout; export the float model")
    if isinstance(model.vit, StackEncoder):
        vit = official_stack_state_dict(model.vit)
    elif isinstance(model.vit, ClipEncoder):
        vit = model.vit.official_state_dict()
    else:
        raise ValueError(f"a {model.vit.kind!r} vision tower has no official layout (only clip and the v7 stack)")
    out = dict(model.rwkv.state_dict(prefix="rwkv."))
    out.update(model.proj.state_dict(prefix="proj."))
    out.update({"vit." + k: v for k, v in vit.items() if not k.endswith("position_ids")})
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in out.items()}


def save_official(model, path, dtype: torch.dtype | None = None) -> int:
    """Write `official_state_dict(model, dtype)` as a `.pth` (atomically); returns the number of tensors."""
    from ..utils import atomic_write

    state = official_state_dict(model, dtype)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    return len(state)
