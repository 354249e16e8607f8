"""How every command loads a model (`--model NAME`, else $VISUALRWKV_MODEL, else the shipped one)
and the name a server reports for it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visualrwkv import hub
from visualrwkv.model import CONFIG_NAME, VisualRWKV

# the trained tiny model shipped with the package (config.json + model.safetensors)
DEFAULT_MODEL_DIR = hub.TINY_MODEL


def load_model(path: str | os.PathLike | None = None, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu", compile: bool = False, download: bool = False,
               text_only_layout: str | None = None, adapter: str | os.PathLike | None = None,
               state: str | os.PathLike | None = None) -> VisualRWKV:
    """The model `path` names (a visualrwkv directory, an official checkpoint, "tiny" or a Hub id;
    see visualrwkv.hub), else the default; `dtype` as in `VisualRWKV.from_pretrained`
    (rwkv/precision.py); `compile`: decode with torch.compile where the compiled
    CPU step does not apply (`RWKV.compile_step`); `download`: fetch a Hub id that is not cached;
    `text_only_layout`: overrides the model config's layout of prompts without an image; `adapter`, `state`:
    a LoRA adapter merged at load and an initial state (`VisualRWKV.from_pretrained`)."""
    device = check_device(device)  # before the (slow) load
    name = path if path is not None else hub.default_model()
    if name == "tiny" and not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no default model at {DEFAULT_MODEL_DIR}: run `visualrwkv train --config tiny` or pass --model PATH")
    model = VisualRWKV.from_pretrained(DEFAULT_MODEL_DIR if name == "tiny" else name, dtype=dtype, device=device,
                                       download=download, adapter=adapter, state=state)
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
    """The id a server reports for the model (see hub.readable_name)."""
    return hub.readable_name(path if path is not None else hub.default_model())


def trained_for_short_answers(path: str | os.PathLike | None) -> bool:
    """Whether the model `path` names was trained on the shapes data (a word or phrase per answer, as a
    classifier-style VQA model answers), read from the `train_config.json` a training run leaves in a
    model directory. Such a model answers best greedily: the web UI makes temperature 0 its default.
    False for anything without that file (official checkpoints, Hub ids)."""
    import json

    name = path if path is not None else hub.default_model()
    directory = DEFAULT_MODEL_DIR if name == "tiny" else Path(name)
    try:
        config = json.loads((directory / "train_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("prepare") == "shapes"
