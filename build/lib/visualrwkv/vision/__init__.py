"""Vision layer: image loading, preprocessing, frozen HF encoders, the tiny encoder, projectors.

transformers is imported only when an HF encoder is built, so this package is light to import.
"""

from .base import VisionEncoder
from .encoders import (
    CLIP_VIT_L14_336,
    MissingWeightsError,
    VisionConfig,
    build_encoder,
    clip_config_from_state_dict,
    v7_stack_config,
)
from .image import DEFAULT_MAX_PIXELS, ImageError, load_image, to_rgb
from .preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    ImagePreprocessor,
    clip_preprocessor,
    preprocess_batch,
    resize_preprocessor,
)
from .projector import (
    GatedMLPProjector,
    HDProjector,
    LinearProjector,
    build_projector,
    infer_projector,
    projector_from_state_dict,
)
from .tiny import TinyEncoder, TinyEncoderConfig

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_VIT_L14_336",
    "DEFAULT_MAX_PIXELS",
    "GatedMLPProjector",
    "HDProjector",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageError",
    "ImagePreprocessor",
    "LinearProjector",
    "MissingWeightsError",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "TinyEncoder",
    "TinyEncoderConfig",
    "VisionConfig",
    "VisionEncoder",
    "build_encoder",
    "build_projector",
    "clip_config_from_state_dict",
    "clip_preprocessor",
    "infer_projector",
    "load_image",
    "preprocess_batch",
    "projector_from_state_dict",
    "resize_preprocessor",
    "to_rgb",
    "v7_stack_config",
]
