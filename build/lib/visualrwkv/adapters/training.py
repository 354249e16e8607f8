"""The trainer's side of parameter-efficient fine-tuning (`adapter` = lora or state in TrainConfig):
what to make trainable, and what a finished run writes (the adapter alone, not the model)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from .lora import ADAPTER_CONFIG, LORA_TARGETS, add_lora, lora_config, merge_lora, save_lora  # noqa: F401
from .state import StateTuning, save_state

STATE_FILE = "state.safetensors"


def setup_trainable(model, cfg) -> list[str]:
    """Freeze the model as `cfg` asks and return the trained parameter names: the `trainable` patterns
    (full fine-tuning), or only LoRA's matrices (lora), or only the initial state (state)."""
    from ..train.trainer import apply_freezing

    if cfg.adapter == "lora":
        trained = add_lora(model, lora_config(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha,
                                              cfg.lora_dropout, base=cfg.init))
    elif cfg.adapter == "state":
        for p in model.parameters():
            p.requires_grad_(False)
        model.state_tuning = StateTuning(model.config.rwkv, shifts=cfg.state_shifts).to(model.device)
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        return apply_freezing(model, cfg.trainable)
    if hasattr(model, "vit"):
        model.vit.trainable = False
    return trained


def save_result(final: str | os.PathLike, cfg, model, trained: dict[str, Tensor]) -> Path:
    """Write a run's adapter into `final` from its trained parameters (full tensors, on every engine)."""
    final = Path(final)
    if cfg.adapter == "lora":
        return save_lora(final, model.peft_config["default"], trained)
    prefix = "state_tuning."
    save_state(final / STATE_FILE, model.state_tuning.sizes, {k[len(prefix):]: v for k, v in trained.items()})
    return final / STATE_FILE


def for_inference(model):
    """A model trained with an adapter, ready to answer: LoRA merged into the weights (the state stays)."""
    if hasattr(model, "peft_config"):
        merge_lora(model)
    return model
