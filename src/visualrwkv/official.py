"""Official VisualRWKV checkpoints into a `VisualRWKV`: the full v6.0 / v7.00 `.pth` (keys rwkv./proj./vit.)
or the exported pair `{name}_rwkv.pth` + `{name}_visual.pth`, everything inferred from the tensors'
shapes (`VisualRWKV.from_pretrained` comes here for any path that is not one of our directories)."""

from __future__ import annotations

import os
from pathlib import Path

from .model import VisualRWKV, VisualRWKVConfig, _load_strict
from .rwkv.checkpoint import CheckpointError, config_from_state_dict, drop_ignored_keys, read_state_dict, strip_prefix
from .vision import official_v7
from .vision.encoders import VisionConfig, clip_config_from_state_dict
from .vision.hf_encoders import official_clip_keys
from .vision.projector import infer_projector


def import_official(path: str | os.PathLike) -> VisualRWKV:
    """An official checkpoint: the full `VisualRWKV-v060-*.pth` or `VisualRWKV-v0700-*.pth` (keys
    rwkv./proj./vit.) or the exported pair `{name}_rwkv.pth` + `{name}_visual.pth`. Everything is
    inferred from shapes; the v7.00 vision stack is remapped by vision/official_v7.py."""
    path = Path(path)
    if path.name.endswith("_rwkv.pth") or path.name.endswith("_visual.pth"):
        stem = path.name.rsplit("_", 1)[0]
        rwkv_path, visual_path = path.with_name(f"{stem}_rwkv.pth"), path.with_name(f"{stem}_visual.pth")
        for p in (rwkv_path, visual_path):
            if not p.is_file():
                raise FileNotFoundError(f"exported checkpoint pair incomplete: {p} not found")
        lm_sd, visual = read_state_dict(rwkv_path), read_state_dict(visual_path)
        sd = {"rwkv." + k: v for k, v in lm_sd.items()} | visual
        source = f"{rwkv_path} + {visual_path}"
    else:
        sd = read_state_dict(path)
        source = str(path)
    lm_sd = strip_prefix(sd, "rwkv.")
    if not lm_sd:
        raise CheckpointError(f"{source}: no 'rwkv.' keys: not a VisualRWKV checkpoint")
    rwkv_config = config_from_state_dict(lm_sd)
    lm_sd = drop_ignored_keys(lm_sd, source)
    proj_sd = strip_prefix(sd, "proj.")
    if not proj_sd:
        raise CheckpointError(f"{source}: no 'proj.' keys")
    if official_v7.is_official_v7(strip_prefix(sd, "vit.")):
        return official_v7.import_v7(rwkv_config, lm_sd, proj_sd, strip_prefix(sd, "vit."), source)
    vit_sd = official_clip_keys(strip_prefix(sd, "vit."))  # also the transformers >= 5 `vit.embeddings.*` layout
    if not any(k.startswith("vision_model.") for k in vit_sd):
        raise CheckpointError(f"{source}: the vision tower is not an HF CLIP state dict under 'vit.vision_model.' "
                              "(only the v6.0 CLIP layout can be imported)")
    kind, in_dim, out_dim, _ = infer_projector(proj_sd)
    vision = VisionConfig("clip", hf_config=clip_config_from_state_dict(vit_sd))
    config = VisualRWKVConfig(rwkv=rwkv_config, vision=vision, projector=kind, scanning="bidirection",
                              image_position="middle")
    model = VisualRWKV(config)
    if model.vit.hidden_size != in_dim:
        raise CheckpointError(f"{source}: projector expects {in_dim}-d features, the CLIP tower gives {model.vit.hidden_size}")
    _load_strict(model.rwkv, lm_sd, source + " (rwkv.)")
    model.proj.load_state_dict(proj_sd, strict=True)
    model.vit.load_official_state_dict(vit_sd)
    return model
