"""The v7 DINOv2 + SigLIP + SAM stack: packing, channel order, save/load, config."""

import numpy as np
import pytest
import torch
from PIL import Image

from visualrwkv.vision import VisionConfig, build_encoder, v7_stack_config
from visualrwkv.vision.stack import StackEncoder

pytest.importorskip("transformers")

# DINO and SigLIP at 28 px / patch 14 and SAM at 64 px / patch 16 all give a 2x2 grid (SAM via 4x4 -> s2d).
DINO = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, mlp_ratio=2)
SIGLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
SAM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
    output_channels=8, window_size=2, global_attn_indexes=[1], mlp_dim=64,
)


def _stack_config():
    return VisionConfig(
        "stack",
        dinov2=VisionConfig("dinov2", hf_config=DINO),
        siglip=VisionConfig("siglip", hf_config=SIGLIP),
        sam=VisionConfig("sam", hf_config=SAM),
    )


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    return build_encoder(_stack_config())


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 70, 3), dtype=np.uint8))


def test_contract(stack):
    assert isinstance(stack, StackEncoder)
    assert stack.hidden_size == 24 + 16 + 32
    assert stack.num_tokens == 4 and stack.patch_grid == (2, 2) and stack.patch_span == (0, 4)
    assert stack.pixel_shape == (9, 64, 64)
    assert not any(p.requires_grad for p in stack.parameters())
    stack.train()
    assert not any(m.training for m in stack.modules())


def test_packing_keeps_each_components_own_preprocessing(stack, tmp_path):
    image = _image()
    packed = stack.preprocess(image)
    assert tuple(packed.shape) == (9, 64, 64)
    torch.testing.assert_close(packed[0:3, :28, :28], stack.dinov2.preprocess(image))
    torch.testing.assert_close(packed[3:6, :28, :28], stack.siglip.preprocess(image))
    torch.testing.assert_close(packed[6:9], stack.sam.preprocess(image))
    assert packed[0:6, 28:].abs().sum() == 0 and packed[0:6, :, 28:].abs().sum() == 0
    path = tmp_path / "scene.png"
    image.save(path)
    torch.testing.assert_close(stack.preprocess(path), packed)
    # ImageNet vs 0.5/0.5 statistics: the DINO and SigLIP inputs really differ.
    assert not torch.allclose(packed[0:3, :28, :28], packed[3:6, :28, :28])


def test_features_are_concatenated_dino_siglip_sam(stack):
    images = [_image(0), _image(1)]
    pixels = stack.preprocess_batch(images)
    features = stack(pixels)
    assert tuple(features.shape) == (2, 4, 72)
    dino = stack.dinov2(torch.stack([stack.dinov2.preprocess(i) for i in images]))
    siglip = stack.siglip(torch.stack([stack.siglip.preprocess(i) for i in images]))
    sam = stack.sam(torch.stack([stack.sam.preprocess(i) for i in images]))
    torch.testing.assert_close(features[..., :24], dino)
    torch.testing.assert_close(features[..., 24:40], siglip)
    torch.testing.assert_close(features[..., 40:], sam)


def test_save_and_load_from_one_directory(stack, tmp_path):
    stack.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dinov2", "sam", "siglip"]
    loaded = build_encoder(VisionConfig("stack", path=str(tmp_path)))
    pixels = stack.preprocess_batch([_image(3)])
    torch.testing.assert_close(loaded(pixels), stack(pixels), rtol=0, atol=0)


def test_mismatched_grids_are_rejected():
    torch.manual_seed(0)
    parts = {
        "dinov2": build_encoder(VisionConfig("dinov2", hf_config=DINO)),
        "siglip": build_encoder(VisionConfig("siglip", hf_config=SIGLIP, image_size=56)),  # 4x4 grid
        "sam": build_encoder(VisionConfig("sam", hf_config=SAM)),
    }
    with pytest.raises(ValueError, match="share one patch grid"):
        StackEncoder(**parts)


def test_config_round_trip_and_v7_preset(tmp_path):
    config = _stack_config()
    assert VisionConfig.from_dict(config.to_dict()) == config
    preset = v7_stack_config(tmp_path)
    assert (preset.dinov2.image_size, preset.siglip.image_size, preset.sam.image_size) == (448, 448, None)
    assert preset.dinov2.path == str(tmp_path / "dinov2")
    with pytest.raises(ValueError, match="lacks components"):
        VisionConfig("stack", dinov2=VisionConfig("dinov2", hf_config=DINO))
    with pytest.raises(ValueError, match="must have kind 'sam'"):
        VisionConfig("stack", path="x", sam=VisionConfig("siglip", hf_config=SIGLIP))
