"""Frozen HF transformers vision towers behind the `VisionEncoder` contract (SPEC §5.1, §5.2, §5.6).

Each class wraps an already-built HF model; loading (local dir, hub id, random config) lives in
encoders.py. All of them are frozen: requires_grad False, eval mode, no_grad forward.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import VisionEncoder
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, clip_preprocessor, resize_preprocessor


def _grid_side(image_size: int, patch_size: int, what: str) -> int:
    if image_size % patch_size:
        raise ValueError(f"{what}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    return image_size // patch_size


class _HFEncoder(VisionEncoder):
    """Shared plumbing: freezing, input resolution, saving."""

    def __init__(self, model: nn.Module, image_size: int | None) -> None:
        super().__init__(trainable=False)
        native = int(model.config.image_size)
        self.image_size = native if image_size is None else int(image_size)
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        # At a non-native resolution the stored position table is resampled on every call.
        self.interpolate_positions = self.image_size != native

    @property
    def hf_model(self) -> nn.Module:
        return self.model

    def _square_patch_grid(self, side: int) -> None:
        """The encoder emits exactly a side × side grid of patch tokens, in raster order."""
        self.patch_grid = (side, side)
        self.patch_span = (0, side * side)
        self.num_tokens = side * side

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.hf_model.save_pretrained(os.fspath(directory))

    def preprocess(self, image):
        return self.preprocessor(image)


class ClipEncoder(_HFEncoder):
    """v6.0: CLIP `last_hidden_state` re-ordered to [patches..., CLS] (SPEC §5.1).

    grid_size: -1 = all patches then CLS (released models); 0 = CLS only; 1 = patch mean then CLS;
    k = k x k average pool of the patch grid then CLS.

    The HF model is stored as `vision_model` so that with transformers >= 5 this module's
    state_dict keys are exactly the official `vit.` keys without that prefix.
    """

    kind = "clip"

    def __init__(self, model: nn.Module, *, grid_size: int = -1, image_size: int | None = None) -> None:
        super().__init__(model, image_size)
        self.vision_model = model
        side = _grid_side(self.image_size, int(model.config.patch_size), "CLIP")
        if not isinstance(grid_size, int) or grid_size < -1:
            raise ValueError(f"grid_size must be -1, 0 or a positive int, got {grid_size!r}")
        if grid_size > 1 and side % grid_size:
            raise ValueError(f"grid_size {grid_size} does not divide the {side}x{side} CLIP patch grid")
        self.grid_size = grid_size
        self.full_grid = (side, side)
        out_side = side if grid_size == -1 else grid_size
        self.patch_grid = (out_side, out_side)
        self.patch_span = (0, out_side * out_side)
        self.num_tokens = out_side * out_side + 1
        self.hidden_size = int(model.config.hidden_size)
        self.preprocessor = clip_preprocessor(self.image_size)
        self.freeze()

    @property
    def hf_model(self) -> nn.Module:
        return self.vision_model

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate_positions
        ).last_hidden_state
        cls, patches = hidden[:, :1], hidden[:, 1:]
        if self.grid_size == 0:
            return cls
        if self.grid_size > 0:
            batch, _, width = patches.shape
            grid = patches.transpose(1, 2).reshape(batch, width, *self.full_grid)
            kernel = self.full_grid[0] // self.grid_size
            patches = F.avg_pool2d(grid, kernel_size=kernel, stride=kernel).flatten(2).transpose(1, 2)
        return torch.cat([patches, cls], dim=1)

    # ---- official v6.0 checkpoint layout: `vit.` + HF CLIPVisionModel state dict ----------
    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys as in the official checkpoint after stripping `vit.` (`vision_model.embeddings...`)."""
        return {_to_official_clip_key(k): v for k, v in self.vision_model.state_dict().items()}

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strictly load official CLIP weights (keys with or without `vit.`; `position_ids` optional)."""
        keys = list(state_dict)
        if keys and all(k.startswith("vit.") for k in keys):
            state_dict = {k[len("vit.") :]: v for k, v in state_dict.items()}
        state_dict = official_clip_keys(state_dict)
        own_keys = set(self.vision_model.state_dict())
        nested = any(k.startswith("vision_model.") for k in own_keys)  # transformers 4.x layout
        mapped = {}
        for key, value in state_dict.items():
            if key.endswith("position_ids"):
                continue  # a non-persistent buffer in recent transformers; present in older files
            if not key.startswith("vision_model."):
                raise ValueError(f"unexpected CLIP key {key!r}: official keys start with 'vision_model.'")
            mapped[key if nested else key[len("vision_model.") :]] = value
        missing = sorted(own_keys - set(mapped) - {k for k in own_keys if k.endswith("position_ids")})
        unexpected = sorted(set(mapped) - own_keys)
        if missing or unexpected:
            raise ValueError(
                f"CLIP state dict does not match the model: missing {_first(missing)}, unexpected {_first(unexpected)}"
            )
        own = self.vision_model.state_dict()
        for key, value in mapped.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"CLIP weight {key!r} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
                )
        self.vision_model.load_state_dict(mapped, strict=False)


def _first(keys: list[str], count: int = 8) -> str:
    return str(keys[:count]) + (f" (+{len(keys) - count} more)" if len(keys) > count else "")


def _to_official_clip_key(key: str) -> str:
    return key if key.startswith("vision_model.") else "vision_model." + key


# The children of HF CLIPVisionTransformer. transformers 4.x nests them under `vision_model.` inside
# CLIPVisionModel; transformers >= 5 puts them at the top, so the official training code run under
# transformers 5 writes `vit.embeddings.*` where the released checkpoints have `vit.vision_model.embeddings.*`.
_CLIP_VISION_CHILDREN = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def official_clip_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP weights (keys relative to `vit.`) in the released `vision_model.*` layout, whichever
    transformers version wrote them; other keys are left as they are (the loader rejects them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = "vision_model." + key if key.startswith(_CLIP_VISION_CHILDREN) else key
        if name in out:
            raise ValueError(f"CLIP weight {name!r} appears in both key layouts ({key!r} and its 'vision_model.' form)")
        out[name] = value
    return out


class SiglipEncoder(_HFEncoder):
    """SigLIP: output of the second-to-last block (`hidden_states[-2]`), no final norm, no pooling head."""

    kind = "siglip"

    def __init__(self, model: nn.Module, *, image_size: int | None = None) -> None:
        super().__init__(model, image_size)
        self.model = model
        self._square_patch_grid(_grid_side(self.image_size, int(model.config.patch_size), "SigLIP"))
        self.hidden_size = int(model.config.hidden_size)
        self.preprocessor = resize_preprocessor(self.image_size, SIGLIP_MEAN, SIGLIP_STD)
        self.freeze()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(
            pixel_values=pixel_values,
            output_hidden_states=True,
            interpolate_pos_encoding=self.interpolate_positions,
        )
        return out.hidden_states[-2]


class Dinov2Encoder(_HFEncoder):
    """DINOv2 with registers: `hidden_states[-2]` (no final norm) minus the CLS + register prefix."""

    kind = "dinov2"

    def __init__(self, model: nn.Module, *, image_size: int | None = None) -> None:
        super().__init__(model, image_size)
        self.model = model
        self._square_patch_grid(_grid_side(self.image_size, int(model.config.patch_size), "DINOv2"))
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0))
        self.hidden_size = int(model.config.hidden_size)
        self.preprocessor = resize_preprocessor(self.image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # HF DINOv2 resamples its position table itself whenever the grid differs from the stored one.
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-2][:, self.num_prefix_tokens :]


class SamEncoder(_HFEncoder):
    """SAM image encoder neck output [B, C, S, S] -> lossless 2x2 space-to-depth -> [B, (S/2)², 4C]."""

    kind = "sam"

    def __init__(self, model: nn.Module, *, image_size: int | None = None) -> None:
        if image_size is not None and image_size != int(model.config.image_size):
            raise ValueError(
                f"SAM runs only at its native image_size {model.config.image_size} (its position table "
                f"is not resampled), got image_size={image_size}"
            )
        super().__init__(model, image_size)
        self.model = model
        side = _grid_side(self.image_size, int(model.config.patch_size), "SAM")
        if side % 2:
            raise ValueError(f"SAM neck grid {side}x{side} is odd; 2x2 space-to-depth needs an even grid")
        self._square_patch_grid(side // 2)
        self.hidden_size = 4 * int(model.config.output_channels)
        self.preprocessor = resize_preprocessor(self.image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        neck = self.model(pixel_values=pixel_values).last_hidden_state
        return space_to_depth(neck).flatten(2).transpose(1, 2)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; output channel 4·c + 2·dh + dw holds x[c, 2i+dh, 2j+dw]."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ValueError(f"space_to_depth needs even height and width, got {height}x{width}")
    x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels * 4, height // 2, width // 2)
