"""The v7.00 SigLIP + DINOv2 + SAM stack: features concatenated as [DINO | SigLIP | SAM] (SPEC §5.2).

The three towers need different resolutions and normalisations of the same image (448² ImageNet,
448² 0.5/0.5, 1024² ImageNet), so `preprocess` packs them into one tensor [3·3, S, S] with
S = the largest resolution: channels 3i..3i+2 hold component i's input in the top-left corner,
zero elsewhere. A packed tensor keeps the generic "stack tensors, call forward" data path working
unchanged, at the cost of some zero padding.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from .base import VisionEncoder
from .image import load_image

# Order of the channel concatenation, fixed by the official checkpoint's projector input.
STACK_ORDER = ("dinov2", "siglip", "sam")


class StackEncoder(VisionEncoder):
    kind = "stack"

    def __init__(self, dinov2: VisionEncoder, siglip: VisionEncoder, sam: VisionEncoder) -> None:
        super().__init__(trainable=False)
        parts = {"dinov2": dinov2, "siglip": siglip, "sam": sam}
        grids = {name: part.patch_grid for name, part in parts.items()}
        if len(set(grids.values())) != 1:
            raise ValueError(f"stacked encoders must share one patch grid, got {grids}")
        for name, part in parts.items():
            if part.patch_span != (0, part.num_tokens):
                raise ValueError(f"stack component {name} must output only patch tokens, got span {part.patch_span}")
        self.dinov2, self.siglip, self.sam = dinov2, siglip, sam
        self.patch_grid = dinov2.patch_grid
        self.num_tokens = dinov2.num_tokens
        self.patch_span = (0, self.num_tokens)
        self.hidden_size = sum(part.hidden_size for part in parts.values())
        self.image_size = max(part.image_size for part in parts.values())
        self.freeze()

    def components(self) -> list[tuple[str, VisionEncoder]]:
        return [(name, getattr(self, name)) for name in STACK_ORDER]

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (3 * len(STACK_ORDER), self.image_size, self.image_size)

    def preprocess(self, image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = load_image(image)  # decode once, not once per component
        packed = torch.zeros(self.pixel_shape)
        for index, (_, part) in enumerate(self.components()):
            pixels = part.preprocess(image)
            packed[3 * index : 3 * index + 3, : pixels.shape[1], : pixels.shape[2]] = pixels
        return packed

    def unpack(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed [B, 9, S, S] -> each component's own [B, 3, s_i, s_i] input."""
        inputs = {}
        for index, (name, part) in enumerate(self.components()):
            _, height, width = part.pixel_shape
            inputs[name] = pixel_values[:, 3 * index : 3 * index + 3, :height, :width]
        return inputs

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        inputs = self.unpack(pixel_values)
        features = [part(inputs[name].contiguous()) for name, part in self.components()]
        return torch.cat(features, dim=-1)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """One sub-directory per component (`dinov2/`, `siglip/`, `sam/`), each a normal HF model dir."""
        for name, part in self.components():
            part.save_pretrained(Path(directory) / name)
