"""Image -> normalised float tensor [3, H, W], with PIL + numpy only (SPEC §5.1, §5.2).

Two recipes:
- "shortest_side_crop" (v6 CLIP): resize so the short side equals `size` (bicubic on the uint8
  image, long side truncated like HF), center-crop `crop_size`, x/255, normalise.
- "resize" (v7 stack): resize straight to (H, W) ignoring the aspect ratio, x/255, normalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .image import ImageSource, load_image, to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

MODES = ("shortest_side_crop", "resize")

# Beyond this aspect ratio the shortest-side resize would allocate size x (ratio*size) pixels
# (a 1x100000 strip would need gigabytes), so the source is first cut to its central
# MAX_ASPECT_RATIO:1 part. The kept crop sits far from that cut, so only the scale changes, by
# less than one part in (MAX_ASPECT_RATIO * size); below the ratio the result is HF-exact.
MAX_ASPECT_RATIO = 32


@dataclass(frozen=True)
class ImagePreprocessor:
    """A picklable image -> tensor recipe (safe to send to DataLoader workers).

    size: the short side for "shortest_side_crop"; the (height, width) target, or one int for a
    square, for "resize". crop_size: the square crop of "shortest_side_crop" (defaults to size).
    """

    mode: str
    size: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}, got {self.mode!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean!r} and {self.std!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std!r}")
        if self.mode == "shortest_side_crop":
            if not isinstance(self.size, int) or self.size <= 0:
                raise ValueError(f"shortest_side_crop needs a positive int size, got {self.size!r}")
            crop = self.size if self.crop_size is None else self.crop_size
            if not isinstance(crop, int) or not 0 < crop <= self.size:
                raise ValueError(f"crop_size must be an int in 1..size={self.size}, got {self.crop_size!r}")
        else:
            height, width = self.output_size
            if height <= 0 or width <= 0:
                raise ValueError(f"resize size must be positive, got {self.size!r}")
            if self.crop_size is not None:
                raise ValueError("crop_size is only used by mode 'shortest_side_crop'")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the produced tensor."""
        if self.mode == "shortest_side_crop":
            crop = self.size if self.crop_size is None else self.crop_size
            return (crop, crop)
        if isinstance(self.size, int):
            return (self.size, self.size)
        height, width = self.size
        return (int(height), int(width))

    def __call__(self, image: ImageSource) -> torch.Tensor:
        """One image (PIL image or anything `load_image` accepts) -> float32 tensor [3, H, W]."""
        image = to_rgb(image) if isinstance(image, Image.Image) else load_image(image)
        if self.mode == "shortest_side_crop":
            pixels = _resize_shortest_side_and_crop(image, self.size, self.output_size[0])
        else:
            height, width = self.output_size
            pixels = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
        return _normalise(pixels, self.mean, self.std)

    def batch(self, images: Iterable[ImageSource]) -> torch.Tensor:
        """Several images -> float32 tensor [B, 3, H, W]."""
        return preprocess_batch(images, self)


def clip_preprocessor(size: int = 336, crop_size: int | None = None) -> ImagePreprocessor:
    """The CLIPImageProcessor recipe (v6.0: size = crop = 336)."""
    return ImagePreprocessor("shortest_side_crop", size, CLIP_MEAN, CLIP_STD, crop_size)


def resize_preprocessor(
    size: int | tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImagePreprocessor:
    """Aspect-free resize (v7: DINOv2 / SAM with ImageNet statistics, SigLIP with 0.5 / 0.5)."""
    return ImagePreprocessor("resize", size, tuple(mean), tuple(std))


def preprocess_batch(images: Iterable[ImageSource], preprocessor) -> torch.Tensor:
    """Apply `preprocessor` to each image and stack the results into [B, ...]."""
    tensors = [preprocessor(image) for image in images]
    if not tensors:
        raise ValueError("preprocess_batch needs at least one image")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"preprocessed images have different shapes {sorted(shapes)}; cannot stack them")
    return torch.stack(tensors)


def _resize_shortest_side_and_crop(image: Image.Image, size: int, crop: int) -> np.ndarray:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long > MAX_ASPECT_RATIO * short:
        keep = MAX_ASPECT_RATIO * short
        start = (long - keep) // 2
        box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
        image = image.crop(box)
        width, height = image.size
        long = keep
    # HF truncates the long side (int, not round); matching it keeps parity with CLIPImageProcessor.
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    resized = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC))
    top = (resized.shape[0] - crop) // 2
    left = (resized.shape[1] - crop) // 2
    return resized[top : top + crop, left : left + crop]


def _normalise(pixels: np.ndarray, mean, std) -> torch.Tensor:
    scaled = pixels.astype(np.float32) * np.float32(1 / 255)
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
