"""Where the shipped model lives and how every command loads a model (`--model PATH` or the default)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visualrwkv.model import CONFIG_NAME, VisualRWKV

# the trained tiny model shipped with the package (config.json + model.safetensors)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


def load_model(path: str | os.PathLike | None = None, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu", compile: bool = False) -> VisualRWKV:
    """The model at `path` (a visualrwkv directory or an official checkpoint), else the shipped default;
    `dtype` as in `VisualRWKV.from_pretrained` (rwkv/precision.py); `compile`: decode with torch.compile where the compiled CPU step does not apply (`RWKV.compile_step`)."""
    if path is None:
        if not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"no default model at {DEFAULT_MODEL_DIR}: run `visualrwkv train --config tiny` or pass --model PATH")
        path = DEFAULT_MODEL_DIR
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    model = VisualRWKV.from_pretrained(path, dtype=dtype, device=device)
    model.rwkv.use_gemv_layout()  # inference only: decoding streams input-major weights faster
    if compile:
        model.rwkv.compile_step()
    return model


def model_name(path: str | os.PathLike | None) -> str:
    """The id a server reports for the model: the directory or file name, or the default's."""
    if path is None:
        return "visualrwkv-tiny"
    return Path(path).resolve().name or "visualrwkv"
