"""Load an image from anything a user may hand us and return a plain 8-bit RGB PIL image.

Every failure raises `ImageError` naming the source, so a data pipeline can report (or skip)
the exact file instead of crashing deep inside PIL or silently training on a wrong picture.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..utils import why_missing

# 64 Mpx is far above any resolution the encoders use (at most 1024², i.e. 1 Mpx) while still
# catching decompression bombs before PIL allocates gigabytes for them.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# Transparent pixels are composited onto white: dark strokes on a transparent background
# (logos, diagrams, scanned text) stay readable, which is what a human viewer sees too.
DEFAULT_BACKGROUND = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageError(ValueError):
    """An image could not be read or is not acceptable (unreadable, truncated, too large)."""


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    name: str | None = None,
) -> Image.Image:
    """Open `source` (path, bytes, binary file object or PIL image) and return an RGB image.

    - EXIF orientation is applied, so the pixels are the way a viewer shows them.
    - Transparency (RGBA, LA, PA, palette with a transparent index) is composited onto `background`.
    - 16-bit, 32-bit integer and float images are rescaled to 8 bits (never clipped); see `to_rgb`.
    - Images with more than `max_pixels` pixels are refused from the header alone, before decoding.
    - Truncated or corrupt files always raise: a partially decoded image would be a silently wrong
      input. (This relies on PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` being left at its default False.)
    - `name`: how errors call the image (default: the path, or e.g. "<1234 bytes>"), for bytes
      that came from a file the user knows by name.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    name = describe_source(source) if name is None else name

    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, name)
        try:
            source.load()
            return to_rgb(_apply_exif_orientation(source, name), background=background)
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types for bad data
            raise ImageError(f"cannot read image {name}: {e}") from e

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(f"image file {name} {why_missing(path)}")
        if not os.path.isfile(path):
            raise ImageError(f"image path {name} is not a regular file")
        try:
            with open(path, "rb") as f:
                return _decode(f, name, max_pixels, background)
        except OSError as e:  # permission denied, I/O error while opening
            raise ImageError(f"cannot read image {name}: {e}") from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"image {name} is empty")
        return _decode(io.BytesIO(bytes(source)), name, max_pixels, background)
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise ImageError(f"image file object {name} is opened in text mode; open it with 'rb'")
        return _decode(source, name, max_pixels, background)
    raise TypeError(
        "image source must be a path, bytes, a binary file object or a PIL.Image, "
        f"got {type(source).__name__}"
    )


def describe_source(source: object) -> str:
    """A short human-readable name for an image source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    file_name = getattr(source, "name", None)
    if isinstance(file_name, str):
        return repr(file_name)
    return f"<{type(source).__name__}>"


def _decode(file: BinaryIO, name: str, max_pixels: int | None, background) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would be "
            f"padded silently; refusing to load {name}. Reset it to False."
        )
    try:
        with Image.open(file) as im:
            # Image.open reads only the header: refuse bombs before any pixel is decoded.
            _check_size(im.size, max_pixels, name)
            im.load()
            return to_rgb(_apply_exif_orientation(im, name), background=background)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name} is too large (PIL decompression-bomb limit): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"cannot identify image {name}: not an image file or an unsupported format") from e
    except Exception as e:  # noqa: BLE001 - truncation surfaces as OSError, SyntaxError, struct.error, ...
        raise ImageError(f"cannot decode image {name} (corrupt or truncated?): {e}") from e


def _check_size(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {name} has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"image {name} is {width}x{height} = {width * height} pixels, above max_pixels={max_pixels} "
            "(a possible decompression bomb; raise the limit to accept it: --max-pixels N, or max_pixels= in Python)"
        )


def _apply_exif_orientation(im: Image.Image, name: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - a broken EXIF block must not make a usable image unusable
        raise ImageError(f"image {name} has an unreadable EXIF orientation: {e}") from e


def to_rgb(im: Image.Image, *, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB with value-preserving rules.

    - I;16*: scaled by 255/65535 (PIL's own convert clips everything above 255 to white).
    - I (32-bit int): treated as 16-bit when all values lie in [0, 65535], else min-max stretched.
    - F (float): [0, 1] is scaled by 255, [0, 255] kept, anything else min-max stretched; NaN -> 0.
    - Modes with alpha are composited onto `background`.
    """
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(im), mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        canvas = Image.new("RGBA", im.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, im).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = values * (255.0 / 65535.0)
    elif mode == "I":
        if values.min() >= 0 and values.max() <= 65535:
            scaled = values * (255.0 / 65535.0)
        else:
            scaled = _min_max_stretch(values)
    else:  # F
        values = np.where(np.isfinite(values), values, 0.0)
        low, high = values.min(), values.max()
        if low >= 0 and high <= 1:
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        else:
            scaled = _min_max_stretch(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _min_max_stretch(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))
