"""RWKV checkpoints: official `.pth` files (loaded with `weights_only=True`, never unpickling code)
and safetensors; the config is inferred from tensor shapes (SPEC §4.1); saving writes safetensors.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils import atomic_save_file
from . import precision
from .model import RWKV, RWKVConfig

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message names the key or file."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pth` file. Pickled code is refused (`weights_only=True`)."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".pth").exists():
        path = path.with_suffix(".pth")  # the rwkv package's convention: a path without ".pth"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files cannot be mmapped
    except Exception as e:
        raise CheckpointError(f"{path}: not a plain weights file; refusing to load it "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors")
    return sd


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_version(sd: dict[str, torch.Tensor]) -> str:
    """'4', '5', '6' or '7' from key names (the rwkv package's rules, SPEC §4.6)."""
    keys = set(sd)
    if any(k.endswith("att.r_k") or k.endswith("att.x_r") for k in keys):
        return "7"
    if any("att.time_maa" in k for k in keys):
        return "6"
    if any(k.endswith("att.ln_x.weight") for k in keys):
        return "5"
    if any("att.time_mix_k" in k for k in keys):
        return "4"
    raise CheckpointError("not an RWKV checkpoint: found none of the RWKV-4/5/6/7 time-mix keys "
                          f"(first keys: {sorted(keys)[:5]})")


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"missing key {key!r}, needed to infer the model size")
    return precision.float_shape(sd, key)


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> RWKVConfig:
    """Every size from shapes: width, layers, heads, head size, LoRA ranks, FFN width, vocabulary."""
    version = detect_version(sd)
    if version != "6":
        raise CheckpointError(f"this is an RWKV-{version} checkpoint; this loader reads RWKV-6 (Finch) files")
    vocab, width = _shape(sd, "emb.weight")
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError("no blocks.N.* keys found")
    n_layer = max(layer_ids) + 1
    n_head, head_size = _shape(sd, "blocks.0.att.time_faaaa")
    return RWKVConfig(
        n_embd=width,
        n_layer=n_layer,
        vocab_size=vocab,
        head_size=head_size,
        dim_ffn=_shape(sd, "blocks.0.ffn.key.weight")[0],
        mix_rank=_shape(sd, "blocks.0.att.time_maa_w2")[1],
        decay_rank=_shape(sd, "blocks.0.att.time_decay_w1")[1],
    )


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one error listing every missing key, unexpected key and wrong shape."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10]) + (" …" if len(unexpected) > 10 else ""))
    for k, v in expected.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            problems.append(f"{k}: shape {tuple(sd[k].shape)} in {source}, expected {tuple(v.shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model:\n  " + "\n  ".join(problems))


def load_rwkv(path: str | os.PathLike, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
              prefix: str | None = None) -> RWKV:
    """Load an RWKV-6 language model from an official `.pth` or a safetensors file.

    `dtype`: a torch float dtype or one of `precision.PRECISIONS` (reduced or quantized large matrices,
    everything else fp32: rwkv/precision.py); None: float32, or the file's int8/int4 if it is quantized.
    `prefix` selects a sub-model (e.g. "rwkv." in a full VisualRWKV checkpoint); by default "rwkv."
    is stripped when every LM key carries it.
    """
    sd = read_state_dict(path)
    if prefix is None and "emb.weight" not in sd and "rwkv.emb.weight" in sd:
        prefix = "rwkv."
    if prefix:
        sd = strip_prefix(sd, prefix)
    config = config_from_state_dict(sd)
    meta = read_metadata(path)
    if "rwkv_config" in meta and RWKVConfig.from_dict(json.loads(meta["rwkv_config"])) != config:
        raise CheckpointError(f"{path}: the stored config disagrees with the tensor shapes")
    run_in = precision.resolve(dtype, sd)
    with torch.device("meta"):
        model = RWKV(config)
    precision.prepare_for_state_dict(model, sd, str(path))
    check_state_dict(model, sd, str(path))
    model = model.to_empty(device=device)
    model.load_state_dict(sd, strict=True)  # copies, casting float tensors to fp32
    return precision.set_precision(model, run_in).eval()


def save_rwkv(model: RWKV, path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> None:
    """Write the LM as safetensors (atomically), with its config in the metadata; `dtype` stores the
    large matrices in that float dtype and the rest in fp32 (rwkv/precision.py; quantize with
    `precision.set_precision` first)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in precision.stored_state_dict(model, dtype).items()}
    meta = {"format": "pt", "rwkv_config": json.dumps(model.config.to_dict())}
    if precision.current_precision(model) in precision.QUANTIZED:
        meta["quantization"] = json.dumps(precision.quantization_info(model))
    atomic_save_file(lambda tmp: save_file(tensors, tmp, metadata=meta), path)
