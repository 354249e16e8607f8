"""RWKV checkpoints: official `.pth` files (loaded with `weights_only=True`, never unpickling code)
and safetensors, RWKV-6 or RWKV-7; the config is inferred from tensor shapes (SPEC §4.1, §4.4);
saving writes safetensors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..utils import atomic_save_file, why_missing
from . import precision
from .model import RWKV, RWKVConfig

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# layer 0 of RWKV-7 has no value residual; some published files carry one anyway (SPEC §3.3)
IGNORED_RWKV7_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message names the key or file."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pth` file. Pickled code is refused (`weights_only=True`)."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".pth").exists():
        path = path.with_suffix(".pth")  # the rwkv package's convention: a path without ".pth"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} ({why_missing(path)})")
    if path.suffix == ".safetensors":
        with _open_safetensors(path) as f:
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


def read_tensor_shapes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file as meta tensors of their shapes, from its header alone:
    a config can be checked against the weights before any memory is allocated."""
    with _open_safetensors(Path(path)) as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), dtype=_SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(),
                                                                               torch.float32), device="meta")
                for k in f.keys()}


# the header's dtype names; quantized files are told apart by theirs (int8 codes, packed uint8 int4)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with _open_safetensors(path) as f:
        return f.metadata() or {}


@contextlib.contextmanager
def _open_safetensors(path: Path):
    """safe_open, whose errors (a truncated or corrupt file) become one CheckpointError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} ({why_missing(path)})")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{str(e).splitlines()[0]}") from None


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
    """Every size from shapes: width, layers, heads, head size, FFN width, vocabulary and each LoRA rank
    (RWKV-7 files differ in ranks at one width: the 0B4 file predates the trainer's rank formula)."""
    version = detect_version(sd)
    if version not in ("6", "7"):
        raise CheckpointError(f"this is an RWKV-{version} checkpoint; this loader reads RWKV-6 (Finch) "
                              "and RWKV-7 (Goose) files")
    vocab, width = _shape(sd, "emb.weight")
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError("no blocks.N.* keys found")
    n_layer = max(layer_ids) + 1
    common = dict(n_embd=width, n_layer=n_layer, vocab_size=vocab, dim_ffn=_shape(sd, "blocks.0.ffn.key.weight")[0])
    try:
        if version == "6":
            n_head, head_size = _shape(sd, "blocks.0.att.time_faaaa")
            return RWKVConfig(**common, head_size=head_size, mix_rank=_shape(sd, "blocks.0.att.time_maa_w2")[1],
                              decay_rank=_shape(sd, "blocks.0.att.time_decay_w1")[1])
        n_head, head_size = _shape(sd, "blocks.0.att.r_k")
        # the value residual starts at layer 1; a one-layer model has none (its rank is then the default)
        value_key = next((k for k in ("blocks.1.att.v1", "blocks.0.att.v1") if k in sd), None)
        return RWKVConfig(**common, version=7, head_size=head_size,
                          decay_rank=_shape(sd, "blocks.0.att.w1")[1], a_rank=_shape(sd, "blocks.0.att.a1")[1],
                          value_rank=_shape(sd, value_key)[1] if value_key else 0,
                          gate_rank=_shape(sd, "blocks.0.att.g1")[1])
    except ValueError as e:  # sizes that no model has (e.g. a width that is not a multiple of the head size)
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"the tensor shapes give an impossible model: {e}") from e


def drop_ignored_keys(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The LM state dict without the tensors that official code ignores too: layer 0's `att.v0/v1/v2`
    in some RWKV-7 files (SPEC §3.3; the `rwkv` package overwrites them with empty tensors)."""
    present = [k for k in IGNORED_RWKV7_KEYS if k in sd]
    if not present:
        return sd
    log.info("%s: ignoring %s (layer 0 has no value residual)", source, ", ".join(present))
    return {k: v for k, v in sd.items() if k not in present}


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
    """Load an RWKV-6 or RWKV-7 language model from an official `.pth` or a safetensors file.

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
    sd = drop_ignored_keys(sd, str(path))
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
