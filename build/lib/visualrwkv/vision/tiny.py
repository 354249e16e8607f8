"""A small trainable encoder for from-scratch tiny models (no pretrained weights exist offline).

64x64 RGB -> strided conv stem (total stride = patch_size) -> learned 2D position embedding ->
a few pre-norm transformer layers -> [B, (image_size/patch_size)², hidden_size].
The conv stem gives colour/shape features cheaply; the position embedding and global attention
keep where things are and let tokens compare with each other (counting, left/right/above/below).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils import atomic_save_file, atomic_write
from .base import VisionEncoder
from .preprocess import SIGLIP_MEAN, SIGLIP_STD, resize_preprocessor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "visualrwkv_tiny_vision"
MAX_SIZE = 2**16  # config.json is user input: absurd sizes are refused before anything is built
MAX_LAYERS = 1024


@dataclass
class TinyEncoderConfig:
    image_size: int = 64
    patch_size: int = 8  # total stride of the stem: a power of two
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "hidden_size", "num_heads"):
            value = getattr(self, name)
            if type(value) is not int or not 0 < value <= MAX_SIZE:
                raise ValueError(f"TinyEncoderConfig.{name} must be an int in [1, {MAX_SIZE}], got {value!r}")
        if self.patch_size & (self.patch_size - 1) or self.patch_size < 2:
            raise ValueError(f"TinyEncoderConfig.patch_size must be a power of two >= 2, got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if type(self.num_layers) is not int or not 0 <= self.num_layers <= MAX_LAYERS:
            raise ValueError(f"TinyEncoderConfig.num_layers must be an int in [0, {MAX_LAYERS}], "
                             f"got {self.num_layers!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or not 0 < self.mlp_ratio <= MAX_LAYERS:
            raise ValueError(f"TinyEncoderConfig.mlp_ratio must be a number in (0, {MAX_LAYERS}], got {self.mlp_ratio!r}")

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_dict(cls, data: dict) -> "TinyEncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown TinyEncoderConfig fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})


class BatchInvariantConv2d(nn.Conv2d):
    """nn.Conv2d computed as unfold + matmul, so an image's features do not depend on its batch.

    oneDNN picks its convolution algorithm by batch size, which changes the result in the last
    bits; the engine's "batched answers equal each request alone" guarantee needs exact equality.
    Same parameters and state-dict keys as nn.Conv2d (groups=1, dilation=1, zero padding only);
    slower, so training (where batches are fixed anyway) uses the native convolution.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("BatchInvariantConv2d supports only groups=1, dilation=1 and numeric zero padding")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        batch, _, height, width = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        columns = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # [B, C·kh·kw, L]
        out = torch.matmul(self.weight.flatten(1), columns)  # [B, O, L], one GEMM per image
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(batch, -1, (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1)


def _conv_stem(config: TinyEncoderConfig) -> nn.Sequential:
    # A non-overlapping 4x4 patchify first (cheap on CPU, unlike a full-resolution 3x3 conv), then
    # overlapping 3x3 stride-2 convs for the remaining downsampling, then one 3x3 conv at the token grid
    # so every token also sees its neighbours (edges, corners: shape cues).
    first = min(4, config.patch_size)
    halvings = (config.patch_size // first).bit_length() - 1
    width = config.hidden_size
    start = max(16, width // 2) if halvings else width
    layers: list[nn.Module] = [
        BatchInvariantConv2d(3, start, kernel_size=first, stride=first),
        nn.GroupNorm(_groups(start), start),
        nn.GELU(),
    ]
    channels = start
    for _ in range(halvings):
        layers += [
            BatchInvariantConv2d(channels, width, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(_groups(width), width),
            nn.GELU(),
        ]
        channels = width
    layers += [
        BatchInvariantConv2d(width, width, kernel_size=3, padding=1),
        nn.GroupNorm(_groups(width), width),
        nn.GELU(),
    ]
    return nn.Sequential(*layers)


def _sincos_positions(side: int, width: int) -> torch.Tensor:
    """[side², width] 2D sin/cos table: half the channels encode the row, half the column.

    Used as the initial value of the (learned) position embedding, so that "where" is readable
    from the first step instead of having to be discovered from a random init.
    """
    quarter = max(1, width // 4)
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(side, dtype=torch.float32)
    angles = coords[:, None] * frequencies[None, :]  # [side, quarter]
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # [side, 2*quarter]
    rows = axis[:, None, :].expand(side, side, -1)
    cols = axis[None, :, :].expand(side, side, -1)
    table = torch.cat([rows, cols], dim=-1).reshape(side * side, -1)
    return torch.nn.functional.pad(table, (0, width - table.shape[1]))[:, :width]


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class TinyEncoder(VisionEncoder):
    kind = "tiny"

    def __init__(self, config: TinyEncoderConfig | None = None, *, trainable: bool = True) -> None:
        super().__init__(trainable=trainable)
        self.config = config = config or TinyEncoderConfig()
        side = config.grid_side
        self.image_size = config.image_size
        self.patch_grid = (side, side)
        self.patch_span = (0, side * side)
        self.num_tokens = side * side
        self.hidden_size = config.hidden_size
        self.preprocessor = resize_preprocessor(config.image_size, SIGLIP_MEAN, SIGLIP_STD)

        self.stem = _conv_stem(config)
        self.position = nn.Parameter(_sincos_positions(side, config.hidden_size)[None])
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=config.hidden_size,
                nhead=config.num_heads,
                dim_feedforward=int(config.hidden_size * config.mlp_ratio),
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size)
        if not trainable:
            self.freeze()

    def preprocess(self, image) -> torch.Tensor:
        return self.preprocessor(image)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(pixel_values).flatten(2).transpose(1, 2) + self.position
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / CONFIG_NAME, "w") as f:
            json.dump({"model_type": MODEL_TYPE, **asdict(self.config)}, f, indent=2)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_save_file(lambda tmp: save_file(state, tmp), directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, trainable: bool = True) -> "TinyEncoder":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"tiny vision encoder directory {str(directory)!r} lacks {path.name}")
        data = json.loads(config_path.read_text())
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(
                f"{str(config_path)!r} is not a tiny vision encoder config (model_type={data.get('model_type')!r})"
            )
        encoder = cls(TinyEncoderConfig.from_dict(data), trainable=trainable)
        encoder.load_state_dict(load_file(str(weights_path)), strict=True)
        return encoder
