"""Where the shipped model lives and how every command loads a model (`--model PATH` or the default)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visualrwkv.model import CONFIG_NAME, VisualRWKV
from visualrwkv.utils import why_missing

# the trained tiny model shipped with the package (config.json + model.safetensors)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


def load_model(path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", compile: bool = False,
               text_only_layout: str | None = None) -> VisualRWKV:
    """The model at `path` (a visualrwkv directory or an official checkpoint), else the shipped default;
    `compile`: decode with torch.compile where the compiled CPU step does not apply (`RWKV.compile_step`);
    `text_only_layout`: overrides the model config's layout of prompts without an image."""
    device = check_device(device)  # before the (slow) load
    if path is None:
        if not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"no default model at {DEFAULT_MODEL_DIR}: run `visualrwkv train --config tiny` or pass --model PATH")
        path = DEFAULT_MODEL_DIR
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} {why_missing(path)}")
    model = VisualRWKV.from_pretrained(path, dtype=dtype, device=device)
    if text_only_layout is not None:
        model.config.text_only_layout = text_only_layout
        model.config.__post_init__()  # validates the name
    model.rwkv.use_gemv_layout()  # inference only: decoding streams input-major weights faster
    if compile:
        model.rwkv.compile_step()
    return model


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or one ValueError saying why it cannot be used here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return device


def model_name(path: str | os.PathLike | None) -> str:
    """The id a server reports for the model: the directory or file name, or the default's."""
    if path is None:
        return "visualrwkv-tiny"
    return Path(path).resolve().name or "visualrwkv"
