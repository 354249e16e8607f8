"""`VisionConfig` + `build_encoder`: one entry point from a serialisable config to a `VisionEncoder`.

Weight sources:
- `hf_config` (a dict for the HF config class): random weights, for tests and from-scratch runs;
- `path` = a local directory: HF `from_pretrained(dir, local_files_only=True)` (a full CLIP /
  SigLIP / SAM model directory also works: the vision part is taken from it);
- `path` = a hub model id: read from the local HF cache, and downloaded only if `allow_download`.
transformers is imported lazily so that image loading and the tiny encoder stay light to import.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .base import VisionEncoder
from .tiny import TinyEncoder, TinyEncoderConfig

KINDS = ("clip", "siglip", "dinov2", "sam", "stack", "tiny")
HF_KINDS = ("clip", "siglip", "dinov2", "sam")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# openai/clip-vit-large-patch14-336, the v6.0 tower: lets the official checkpoint's `vit.*` weights
# be loaded without any HF directory.
CLIP_VIT_L14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


@dataclass
class VisionConfig:
    kind: str
    path: str | None = None
    hf_config: dict | None = None
    image_size: int | None = None  # input resolution when not the model's native one (v7: 448)
    grid_size: int = -1  # CLIP only (SPEC §5.1)
    allow_download: bool = False
    dtype: str = "float32"
    trainable: bool = True  # tiny only; HF towers are always frozen
    tiny: TinyEncoderConfig | None = None
    dinov2: "VisionConfig | None" = None  # stack components; default: sub-directories of `path`
    siglip: "VisionConfig | None" = None
    sam: "VisionConfig | None" = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"VisionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"VisionConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.hf_config is not None and not isinstance(self.hf_config, dict):
            raise TypeError(
                f"VisionConfig.hf_config must be a dict of HF config fields, got {type(self.hf_config).__name__}"
            )
        if self.path is not None:
            self.path = os.fspath(self.path)
        if self.kind in HF_KINDS and (self.path is None) == (self.hf_config is None):
            raise ValueError(f"VisionConfig(kind={self.kind!r}) needs exactly one of path or hf_config")
        if self.hf_config is not None and self.kind not in HF_KINDS:
            raise ValueError(f"hf_config applies only to kinds {HF_KINDS}, got kind {self.kind!r}")
        if self.image_size is not None and self.kind not in HF_KINDS:
            raise ValueError(f"image_size applies only to kinds {HF_KINDS} (set it per stack component or in tiny)")
        if self.tiny is not None and self.kind != "tiny":
            raise ValueError(f"VisionConfig.tiny applies only to kind 'tiny', got kind {self.kind!r}")
        if self.kind == "tiny" and self.path is not None and self.tiny is not None:
            raise ValueError("a tiny VisionConfig takes either path (saved encoder) or tiny (new one), not both")
        if self.kind != "clip" and self.grid_size != -1:
            raise ValueError(f"grid_size applies only to kind 'clip', got kind {self.kind!r}")
        if isinstance(self.tiny, dict):
            self.tiny = TinyEncoderConfig.from_dict(self.tiny)
        for name in ("dinov2", "siglip", "sam"):
            part = getattr(self, name)
            if isinstance(part, dict):
                part = VisionConfig.from_dict(part)
                setattr(self, name, part)
            if part is not None and self.kind != "stack":
                raise ValueError(f"VisionConfig.{name} is only used by kind 'stack'")
            if part is not None and part.kind != name:
                raise ValueError(f"stack component {name} must have kind {name!r}, got {part.kind!r}")
        if self.kind == "stack":
            missing = [n for n in ("dinov2", "siglip", "sam") if getattr(self, n) is None]
            if missing and self.path is None:
                raise ValueError(f"stack VisionConfig lacks components {missing} and has no path to find them under")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VisionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VisionConfig fields {unknown}")
        return cls(**data)


def v7_stack_config(root: str | os.PathLike, *, dtype: str = "float32") -> VisionConfig:
    """The v7.00 stack from HF directories `root/dinov2`, `root/siglip`, `root/sam`, run at 448 / 448 / 1024."""
    root = Path(root)
    return VisionConfig(
        kind="stack",
        dinov2=VisionConfig("dinov2", path=str(root / "dinov2"), image_size=448, dtype=dtype),
        siglip=VisionConfig("siglip", path=str(root / "siglip"), image_size=448, dtype=dtype),
        sam=VisionConfig("sam", path=str(root / "sam"), dtype=dtype),
    )


def build_encoder(config: VisionConfig) -> VisionEncoder:
    """Build (and load) the encoder `config` describes."""
    if not isinstance(config, VisionConfig):
        raise TypeError(f"build_encoder needs a VisionConfig, got {type(config).__name__}")
    if config.kind == "tiny":
        if config.path is not None:
            encoder = TinyEncoder.from_pretrained(config.path, trainable=config.trainable)
        else:
            encoder = TinyEncoder(config.tiny or TinyEncoderConfig(), trainable=config.trainable)
        return encoder.to(DTYPES[config.dtype])
    if config.kind == "stack":
        from .stack import StackEncoder

        parts = {}
        for name in ("dinov2", "siglip", "sam"):
            part = getattr(config, name)
            if part is None:
                part = VisionConfig(
                    name, path=str(Path(config.path) / name), dtype=config.dtype, allow_download=config.allow_download
                )
            parts[name] = build_encoder(part)
        return StackEncoder(**parts)
    return _build_hf_encoder(config)


def _build_hf_encoder(config: VisionConfig) -> VisionEncoder:
    import transformers

    from . import hf_encoders

    model_class, config_class, encoder_class = {
        "clip": ("CLIPVisionModel", "CLIPVisionConfig", hf_encoders.ClipEncoder),
        "siglip": ("SiglipVisionModel", "SiglipVisionConfig", hf_encoders.SiglipEncoder),
        "dinov2": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", hf_encoders.Dinov2Encoder),
        "sam": ("SamVisionModel", "SamVisionConfig", hf_encoders.SamEncoder),
    }[config.kind]
    model_class = getattr(transformers, model_class)
    if config.hf_config is not None:
        model = model_class(getattr(transformers, config_class)(**config.hf_config))
    else:
        model = _from_pretrained(model_class, config.path, config.allow_download)
    model = model.to(DTYPES[config.dtype])
    options: dict[str, Any] = {"image_size": config.image_size}
    if config.kind == "clip":
        options["grid_size"] = config.grid_size
    return encoder_class(model, **options)


def _from_pretrained(model_class, path: str, allow_download: bool):
    if os.path.isdir(path):
        return _checked_from_pretrained(model_class, path, local_files_only=True)
    if os.path.exists(path):
        raise ValueError(f"vision model path {path!r} is a file; expected an HF model directory")
    if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path:
        raise FileNotFoundError(f"vision model directory {path!r} does not exist")
    try:
        return _checked_from_pretrained(model_class, path, local_files_only=True)
    except MissingWeightsError:
        raise
    except (OSError, ValueError) as e:
        if not allow_download:
            raise FileNotFoundError(
                f"vision model {path!r} is neither a local directory nor in the local HF cache; "
                "pass allow_download=True to download it from the hub"
            ) from e
    return _checked_from_pretrained(model_class, path, local_files_only=False)


class MissingWeightsError(ValueError):
    """A checkpoint lacks weights the model needs (HF would silently initialise them at random)."""


def _checked_from_pretrained(model_class, path: str, *, local_files_only: bool):
    model, info = model_class.from_pretrained(path, local_files_only=local_files_only, output_loading_info=True)
    # Extra keys (a CLIP text tower, SAM's mask decoder) are expected; absent or mis-shaped ones
    # would leave randomly initialised weights inside a "pretrained" frozen tower.
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise MissingWeightsError(
            f"{model_class.__name__} weights in {path!r} are incomplete: missing {sorted(missing)[:8]}, "
            f"mismatched shapes {mismatched[:8]}"
        )
    return model.eval()


def clip_config_from_state_dict(
    state_dict: dict[str, torch.Tensor], *, num_attention_heads: int | None = None
) -> dict:
    """HF CLIPVisionConfig fields inferred from official CLIP weights (keys relative to `vit.`).

    Shapes cannot tell the head count or the activation: heads default to hidden/64 (every
    OpenAI CLIP), the activation to quick_gelu.
    """
    from .hf_encoders import official_clip_keys

    state_dict = official_clip_keys({k[len("vit.") :] if k.startswith("vit.") else k: v for k, v in state_dict.items()})
    prefix = "vision_model."
    try:
        hidden = state_dict[prefix + "embeddings.class_embedding"].shape[0]
        patch = state_dict[prefix + "embeddings.patch_embedding.weight"].shape[-1]
        positions = state_dict[prefix + "embeddings.position_embedding.weight"].shape[0]
        intermediate = state_dict[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"not an official CLIP vision state dict: missing {e.args[0]!r}") from None
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ValueError(f"CLIP position table has {positions} rows, not 1 + a square patch grid")
    layers_prefix = prefix + "encoder.layers."
    layer_ids = {int(k[len(layers_prefix) :].split(".")[0]) for k in state_dict if k.startswith(layers_prefix)}
    heads = num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by num_attention_heads {heads}")
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=len(layer_ids),
        num_attention_heads=heads,
        image_size=side * patch,
        patch_size=patch,
        hidden_act="quick_gelu",
    )
