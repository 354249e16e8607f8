"""LoRA adapters on VisualRWKV through `peft`, saved in PEFT's own format.

Our projections are `nn.Linear` subclasses, so peft's LoRA layers wrap them as they are. The target
modules are chosen by fnmatch patterns over module names (`LORA_TARGETS`: every RWKV-6 and RWKV-7
time-mix and channel-mix projection, and the projector), resolved here to the exact list of linear
layers, which is what `adapter_config.json` records: the file then loads with peft's own
`PeftModel.from_pretrained` onto a VisualRWKV as well as with `load_adapter`.

An adapter directory holds `adapter_config.json` (peft's `LoraConfig`) and
`adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight`, as
`PeftModel.save_pretrained` writes them), both written atomically. For inference an adapter is merged
into the weights at load (`merge_lora`): the model is then a plain VisualRWKV, so every decode fast
path (the compiled CPU step, the GEMV layout, bf16 and int8/int4 storage) applies unchanged and a
decode step costs what the base model's costs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..utils import atomic_save_file, atomic_write

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's parameters on disk
# RWKV-6 time-mix r/k/v/g/o and channel-mix k/r/v; RWKV-7 has the same names less gate and ffn.receptance
LORA_TARGETS = [f"rwkv.blocks.*.att.{n}" for n in ("receptance", "key", "value", "gate", "output")] + \
    [f"rwkv.blocks.*.ffn.{n}" for n in ("key", "receptance", "value")] + ["proj", "proj.*"]


def target_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """The names of the linear layers that match a pattern; one clear error if none does."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not names:
        raise ValueError(f"lora_targets {patterns} match no linear layer of the model")
    return names


def lora_config(model: nn.Module, patterns: list[str], rank: int, alpha: float, dropout: float, base: str = ""):
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_rank must be a positive integer, got {rank!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {dropout!r}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(model, patterns),
                      bias="none", base_model_name_or_path=base or None)


def add_lora(model: nn.Module, config) -> list[str]:
    """Wrap the config's target layers with LoRA (in place; B starts at zero, so the model is unchanged),
    freeze everything else; returns the names of the trainable (LoRA) parameters."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model)
    _layers_replaced(model)
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
        if p.requires_grad:
            trained.append(name)
    return trained


def peft_key(name: str) -> str:
    """Our parameter name (`…key.lora_A.default.weight`) → its key in adapter_model.safetensors."""
    return PEFT_PREFIX + name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def save_lora(directory: str | os.PathLike, config, tensors: dict[str, Tensor]) -> Path:
    """Write an adapter in PEFT's format: `tensors` maps our LoRA parameter names to values."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {peft_key(k): v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    atomic_save_file(lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}), directory / ADAPTER_WEIGHTS)
    data = config.to_dict()
    for key, value in data.items():  # what peft's own save_pretrained does with its sets
        if isinstance(value, set):
            data[key] = sorted(value)
    with atomic_write(directory / ADAPTER_CONFIG, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return directory


def read_lora(directory: str | os.PathLike):
    """(LoraConfig, tensors keyed as on disk) of an adapter directory, checked to be a LoRA adapter."""
    from peft import LoraConfig

    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"--adapter {directory}: no {name} (an adapter folder holds {ADAPTER_CONFIG} "
                                    f"and {ADAPTER_WEIGHTS}, as `visualrwkv train --config finetune-lora` writes)")
    try:
        data = json.loads((directory / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise ValueError(f"{directory / ADAPTER_CONFIG}: not a LoRA adapter (peft_type "
                         f"{data.get('peft_type') if isinstance(data, dict) else None!r})")
    try:
        config = LoraConfig.from_pretrained(str(directory))  # a local folder: nothing is downloaded
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: not a LoRA config peft reads ({e})") from None
    return config, load_file(str(directory / ADAPTER_WEIGHTS))


def load_lora(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Add the adapter in `directory` to `model` (unmerged, as for further training)."""
    from peft import set_peft_model_state_dict

    config, tensors = read_lora(directory)
    own = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = config.target_modules if isinstance(config.target_modules, (set, list)) else None
    # peft matches a listed target by the module's full name or by its last dotted parts, and it saves
    # a long list of full names (20 or more) as the shortest such suffixes ("key", "gate", ...)
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in own)) if targets else []
    if missing:
        raise ValueError(f"--adapter {directory}: made for another model: no layer {missing[0]} here")
    add_lora(model, config)
    stripped = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in tensors.items()}
    expected = {n for n, _ in model.named_parameters() if ".lora_" in n}
    shapes = dict(model.named_parameters())
    for key, value in stripped.items():
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if name not in expected:
            raise ValueError(f"--adapter {directory}: {key} fits no LoRA layer of this model")
        if shapes[name].shape != value.shape:
            raise ValueError(f"--adapter {directory}: {key} is {tuple(value.shape)}, the model's layer takes "
                             f"{tuple(shapes[name].shape)}")
    result = set_peft_model_state_dict(model, stripped)
    absent = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if absent or len(stripped) != len(expected):
        raise ValueError(f"--adapter {directory}: {ADAPTER_WEIGHTS} lacks LoRA weights the config names")
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight (W + s·B·A) and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    _layers_replaced(model)
    return model


def _layers_replaced(model: nn.Module) -> None:
    """The compiled CPU step caches where each layer's weights are: it must look again."""
    from ..ops.cpu_kernels import forget_layers

    for module in model.modules():
        if hasattr(module, "blocks"):
            forget_layers(module)


def adapter_digest(directory: str | os.PathLike) -> str:
    """sha256 of an adapter's weights and config: what the engine's cache key says about a merged model."""
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()[:16]
