"""The contract every vision encoder fulfils, so the model, scanning and data code never care which one it is.

- `forward(pixel_values [B, *pixel_shape]) -> features [B, num_tokens, hidden_size]`.
- `patch_span = (start, end)`: the output tokens that are the `patch_grid` patches in raster
  order; 2D scanning may permute exactly these (anything outside, e.g. CLIP's CLS, stays put).
- `preprocess(image) -> Tensor [*pixel_shape]`; `pixel_shape` is (3, H, W) except for the stack,
  which packs one input per component (see stack.py).
- Frozen encoders stay in eval mode, have no trainable parameters and run under no_grad.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .image import ImageSource
from .preprocess import preprocess_batch


class VisionEncoder(nn.Module):
    num_tokens: int
    hidden_size: int
    image_size: int
    patch_grid: tuple[int, int]
    patch_span: tuple[int, int]
    kind: str = "base"

    def __init__(self, *, trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable

    # ---- subclasses implement these -------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features for validated pixel values already on the right device and dtype."""
        raise NotImplementedError

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        raise NotImplementedError

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def save_pretrained(self, directory: str) -> None:
        raise NotImplementedError

    # ---- shared behaviour -----------------------------------------------------------------
    def preprocess_batch(self, images: Iterable[ImageSource]) -> torch.Tensor:
        return preprocess_batch(images, self.preprocess)

    def blank_pixels(self, batch_size: int = 1) -> torch.Tensor:
        """All-zero pixel values, the official stand-in for image-less samples and unreadable images."""
        return torch.zeros((batch_size, *self.pixel_shape))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixel_values)
        parameter = next(self.parameters(), None)
        if parameter is not None:
            pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        if self.trainable:
            features = self.encode(pixel_values)
        else:
            with torch.no_grad():
                features = self.encode(pixel_values)
        expected = (pixel_values.shape[0], self.num_tokens, self.hidden_size)
        if tuple(features.shape) != expected:
            raise RuntimeError(f"{type(self).__name__} produced features {tuple(features.shape)}, expected {expected}")
        return features

    def freeze(self) -> "VisionEncoder":
        self.trainable = False
        self.requires_grad_(False)
        return self.eval()

    def unfreeze(self) -> "VisionEncoder":
        """Make the tower trainable (full fine-tuning); forward then records gradients."""
        self.trainable = True
        self.requires_grad_(True)
        return self.train()

    def train(self, mode: bool = True) -> "VisionEncoder":
        # A frozen tower must never switch to train mode when the surrounding model does
        # (dropout / drop-path would make its features random).
        return super().train(mode and self.trainable)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 1 + len(self.pixel_shape) or tuple(pixel_values.shape[1:]) != self.pixel_shape:
            raise ValueError(
                f"{type(self).__name__} expects pixel_values of shape [B, {', '.join(map(str, self.pixel_shape))}], "
                f"got {list(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be a float tensor (normalised), got {pixel_values.dtype}")

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, tokens={self.num_tokens}, hidden={self.hidden_size}, "
            f"grid={self.patch_grid}, span={self.patch_span}, trainable={self.trainable}"
        )
