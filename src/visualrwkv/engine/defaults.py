"""How every command loads a model (`--model NAME`, else $VISUALRWKV_MODEL, else the shipped one)
and the name a server reports for it."""

from __future__ import annotations

import os

import torch

from visualrwkv import hub
from visualrwkv.model import CONFIG_NAME, VisualRWKV

# the trained tiny model shipped with the package (config.json + model.safetensors)
DEFAULT_MODEL_DIR = hub.TINY_MODEL


def load_model(path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", compile: bool = False, download: bool = False) -> VisualRWKV:
    """The model `path` names (a visualrwkv directory, an official checkpoint, "tiny" or a Hub id;
    see visualrwkv.hub), else the default; `compile`: decode with torch.compile where the compiled
    CPU step does not apply (`RWKV.compile_step`); `download`: fetch a Hub id that is not cached."""
    name = path if path is not None else hub.default_model()
    if name == "tiny" and not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no default model at {DEFAULT_MODEL_DIR}: run `visualrwkv train --config tiny` or pass --model PATH")
    model = VisualRWKV.from_pretrained(DEFAULT_MODEL_DIR if name == "tiny" else name, dtype=dtype, device=device,
                                       download=download)
    model.rwkv.use_gemv_layout()  # inference only: decoding streams input-major weights faster
    if compile:
        model.rwkv.compile_step()
    return model


def model_name(path: str | os.PathLike | None) -> str:
    """The id a server reports for the model (see hub.readable_name)."""
    return hub.readable_name(path if path is not None else hub.default_model())
