"""HF-backed encoders (CLIP, SigLIP, DINOv2-with-registers, SAM) on tiny random configs."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from visualrwkv.vision import VisionConfig, build_encoder, clip_config_from_state_dict
from visualrwkv.vision.encoders import MissingWeightsError
from visualrwkv.vision.hf_encoders import space_to_depth

transformers = pytest.importorskip("transformers")

CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
CLIP_4x4 = dict(CLIP, image_size=56)  # a 4x4 patch grid, for grid pooling
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14)
DINO = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14, mlp_ratio=2)
SAM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16,
    output_channels=8, window_size=2, global_attn_indexes=[1], mlp_dim=64,
)


def _build(kind, hf_config, seed=0, **options):
    torch.manual_seed(seed)
    return build_encoder(VisionConfig(kind, hf_config=hf_config, **options))


def _pixels(encoder, batch=2, seed=1):
    return torch.randn((batch, *encoder.pixel_shape), generator=torch.Generator().manual_seed(seed))


# ---- CLIP (v6.0) ---------------------------------------------------------------------------------


def test_clip_puts_patches_first_and_cls_last():
    encoder = _build("clip", CLIP)
    pixels = _pixels(encoder)
    features = encoder(pixels)
    assert tuple(features.shape) == (2, 5, 32)
    assert (encoder.num_tokens, encoder.hidden_size, encoder.image_size) == (5, 32, 28)
    assert encoder.patch_grid == (2, 2) and encoder.patch_span == (0, 4)
    hf = encoder.vision_model(pixel_values=pixels).last_hidden_state  # [CLS, p0..p3]
    torch.testing.assert_close(features[:, :4], hf[:, 1:])
    torch.testing.assert_close(features[:, 4], hf[:, 0])
    # last_hidden_state is the final layer *without* post_layernorm (that only feeds the pooled output)
    assert not torch.allclose(features[:, 4], encoder.vision_model.post_layernorm(hf[:, 0]))


def test_clip_grid_sizes():
    full = _build("clip", CLIP_4x4)
    pixels = _pixels(full)
    reference = full(pixels)  # 16 patches (4x4) + CLS
    patches, cls = reference[:, :16], reference[:, 16]
    for grid_size, tokens in [(0, 1), (1, 2), (2, 5), (4, 17)]:
        encoder = _build("clip", CLIP_4x4, grid_size=grid_size)
        out = encoder(pixels)
        assert out.shape[1] == tokens == encoder.num_tokens
        assert encoder.patch_span == (0, tokens - 1)
        torch.testing.assert_close(out[:, -1], cls)
    pooled = _build("clip", CLIP_4x4, grid_size=2)(pixels)
    grid = patches.reshape(2, 4, 4, 32)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
    torch.testing.assert_close(pooled[:, 0], top_left)
    torch.testing.assert_close(pooled[:, 3], bottom_right)
    torch.testing.assert_close(_build("clip", CLIP_4x4, grid_size=1)(pixels)[:, 0], patches.mean(dim=1))
    with pytest.raises(ValueError, match="does not divide"):
        _build("clip", CLIP_4x4, grid_size=3)
    with pytest.raises(ValueError, match="grid_size"):
        _build("clip", CLIP_4x4, grid_size=-2)


def test_clip_official_checkpoint_layout_loads_strictly():
    source, target = _build("clip", CLIP, seed=0), _build("clip", CLIP, seed=1)
    official = source.official_state_dict()
    assert all(k.startswith("vision_model.") for k in official)
    assert "vision_model.embeddings.class_embedding" in official
    assert "vision_model.pre_layrnorm.weight" in official
    # With the HF module stored as `vision_model`, the encoder's own keys are the official ones.
    assert set(source.state_dict()) == set(official)
    checkpoint = {"vit." + k: v.to(torch.bfloat16) for k, v in official.items()}
    checkpoint["vit.vision_model.embeddings.position_ids"] = torch.arange(5)[None]  # older transformers
    pixels = _pixels(source)
    assert not torch.allclose(source(pixels), target(pixels))
    target.load_official_state_dict(checkpoint)
    expected = {k: v.to(torch.bfloat16).float() for k, v in official.items()}
    torch.testing.assert_close(target.official_state_dict(), expected)

    missing = dict(checkpoint)
    del missing["vit.vision_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="missing.*layers.1.mlp.fc2.bias"):
        target.load_official_state_dict(missing)
    extra = dict(checkpoint, **{"vit.vision_model.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected.*extra.weight"):
        target.load_official_state_dict(extra)
    wrong = dict(checkpoint, **{"vit.vision_model.embeddings.class_embedding": torch.zeros(31)})
    with pytest.raises(ValueError, match="class_embedding.*shape"):
        target.load_official_state_dict(wrong)


def test_clip_config_is_inferred_from_official_weights():
    source = _build("clip", CLIP_4x4)
    checkpoint = {"vit." + k: v for k, v in source.official_state_dict().items()}
    inferred = clip_config_from_state_dict(checkpoint, num_attention_heads=2)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size"):
        assert inferred[key] == CLIP_4x4[key], key
    rebuilt = _build("clip", inferred, seed=5)
    rebuilt.load_official_state_dict(checkpoint)
    pixels = _pixels(source)
    torch.testing.assert_close(rebuilt(pixels), source(pixels))
    with pytest.raises(ValueError, match="class_embedding"):
        clip_config_from_state_dict({"vit.proj.weight": torch.zeros(2, 2)})


# ---- SigLIP, DINOv2, SAM ---------------------------------------------------------------------------


def test_siglip_takes_the_second_to_last_block_without_final_norm():
    encoder = _build("siglip", SIGLIP)
    pixels = _pixels(encoder)
    features = encoder(pixels)
    assert tuple(features.shape) == (2, 4, 32) and encoder.patch_span == (0, 4)
    out = encoder.model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == SIGLIP["num_hidden_layers"] + 1
    torch.testing.assert_close(features, out.hidden_states[-2])
    assert not torch.allclose(features, out.last_hidden_state)


def test_siglip_at_a_non_native_resolution_resamples_positions():
    encoder = _build("siglip", SIGLIP, image_size=56)
    assert encoder.patch_grid == (4, 4) and encoder.num_tokens == 16
    assert encoder(_pixels(encoder)).shape == (2, 16, 32)
    assert tuple(encoder.preprocess(Image.new("RGB", (90, 40))).shape) == (3, 56, 56)


def test_dinov2_drops_cls_and_registers_and_skips_the_final_norm():
    encoder = _build("dinov2", dict(DINO, num_register_tokens=4))
    pixels = _pixels(encoder)
    features = encoder(pixels)
    assert tuple(features.shape) == (2, 4, 32) and encoder.num_prefix_tokens == 5
    out = encoder.model(pixel_values=pixels, output_hidden_states=True)
    assert out.hidden_states[-2].shape[1] == 1 + 4 + 4
    torch.testing.assert_close(features, out.hidden_states[-2][:, 5:])
    assert not torch.allclose(features, out.last_hidden_state[:, 5:])


def test_space_to_depth_channel_formula_on_a_hand_built_tensor():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = space_to_depth(x)
    assert tuple(y.shape) == (2, 12, 2, 3)
    for c in range(3):
        for dh in range(2):
            for dw in range(2):
                torch.testing.assert_close(y[:, 4 * c + 2 * dh + dw], x[:, c, dh::2, dw::2])
    assert y[0, :, 0, 0].tolist() == [0, 1, 6, 7, 24, 25, 30, 31, 48, 49, 54, 55]
    with pytest.raises(ValueError, match="even"):
        space_to_depth(torch.zeros(1, 1, 3, 4))


def test_sam_neck_is_space_to_depth_then_row_major_tokens():
    encoder = _build("sam", SAM)
    pixels = _pixels(encoder)
    features = encoder(pixels)
    assert tuple(features.shape) == (2, 4, 32) and encoder.patch_grid == (2, 2)
    neck = encoder.model(pixel_values=pixels).last_hidden_state
    assert tuple(neck.shape) == (2, 8, 4, 4)
    # token (i, j) row-major, channel 4c + 2dh + dw = neck[c, 2i+dh, 2j+dw]
    assert features[1, 1 * 2 + 0, 4 * 5 + 2 * 1 + 0] == neck[1, 5, 2 * 1 + 1, 2 * 0 + 0]
    torch.testing.assert_close(features, space_to_depth(neck).flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="native image_size"):
        _build("sam", SAM, image_size=128)


# ---- shared contract: frozen, validated, saved and loaded ------------------------------------------


@pytest.mark.parametrize("kind,hf_config", [("clip", CLIP), ("siglip", SIGLIP), ("dinov2", DINO), ("sam", SAM)])
def test_frozen_and_save_load_round_trip(tmp_path, kind, hf_config):
    encoder = _build(kind, hf_config)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # a surrounding model switching to train mode must not unfreeze the tower
    assert not encoder.training and not any(m.training for m in encoder.modules())
    pixels = _pixels(encoder).requires_grad_(True)
    features = encoder(pixels)
    assert not features.requires_grad

    encoder.save_pretrained(tmp_path / kind)
    loaded = build_encoder(VisionConfig(kind, path=str(tmp_path / kind)))
    assert type(loaded) is type(encoder) and not loaded.training
    torch.testing.assert_close(loaded(pixels.detach()), features, rtol=0, atol=0)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert tuple(encoder.preprocess(image).shape) == encoder.pixel_shape
    assert tuple(encoder.preprocess_batch([image, image]).shape) == (2, *encoder.pixel_shape)
    assert tuple(encoder.blank_pixels(3).shape) == (3, *encoder.pixel_shape)


def test_unfreeze_for_full_fine_tuning():
    encoder = _build("siglip", SIGLIP).unfreeze()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    encoder(_pixels(encoder)).sum().backward()
    assert encoder.model.embeddings.patch_embedding.weight.grad is not None
    encoder.freeze()
    assert not encoder.training and not encoder(_pixels(encoder)).requires_grad


def test_forward_validates_pixel_values():
    encoder = _build("clip", CLIP)
    with pytest.raises(ValueError, match=r"\[B, 3, 28, 28\].*\[2, 3, 32, 32\]"):
        encoder(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        encoder(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Tensor"):
        encoder(np.zeros((1, 3, 28, 28), np.float32))


def test_vision_part_of_full_clip_and_sam_directories(tmp_path):
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=CLIP, projection_dim=16)).eval()
    clip.save_pretrained(tmp_path / "clip")
    encoder = build_encoder(VisionConfig("clip", path=str(tmp_path / "clip")))
    pixels = _pixels(encoder)
    with torch.no_grad():
        hf = clip.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(encoder(pixels), torch.cat([hf[:, 1:], hf[:, :1]], dim=1))

    sam = transformers.SamModel(
        transformers.SamConfig(
            vision_config=SAM,
            prompt_encoder_config=dict(hidden_size=8),
            mask_decoder_config=dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, mlp_dim=16, iou_head_hidden_dim=8),
        )
    ).eval()
    sam.save_pretrained(tmp_path / "sam")
    encoder = build_encoder(VisionConfig("sam", path=str(tmp_path / "sam")))
    pixels = _pixels(encoder)
    with torch.no_grad():
        neck = sam.vision_encoder(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(encoder(pixels), space_to_depth(neck).flatten(2).transpose(1, 2))


def test_incomplete_weights_never_load_as_random(tmp_path):
    _build("clip", CLIP).save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    dropped = next(k for k in weights if "layers.1.mlp.fc1.weight" in k)
    del weights[dropped]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match="fc1.weight"):
        build_encoder(VisionConfig("clip", path=str(tmp_path)))


def test_missing_paths_and_unknown_ids_never_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(VisionConfig("clip", path=str(tmp_path / "absent")))
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        build_encoder(VisionConfig("siglip", path="visualrwkv-tests/no-such-model"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        build_encoder(VisionConfig("dinov2", path=str(tmp_path / "file.bin")))


def test_vision_config_validation_and_serialisation():
    with pytest.raises(ValueError, match="kind"):
        VisionConfig("resnet", path="x")
    with pytest.raises(ValueError, match="exactly one of path or hf_config"):
        VisionConfig("clip")
    with pytest.raises(ValueError, match="exactly one of path or hf_config"):
        VisionConfig("clip", path="x", hf_config=CLIP)
    with pytest.raises(ValueError, match="grid_size"):
        VisionConfig("siglip", path="x", grid_size=2)
    with pytest.raises(ValueError, match="dtype"):
        VisionConfig("clip", path="x", dtype="fp8")
    with pytest.raises(TypeError, match="hf_config"):
        VisionConfig("clip", hf_config=transformers.CLIPVisionConfig(**CLIP))
    with pytest.raises(ValueError, match="unknown VisionConfig fields"):
        VisionConfig.from_dict({"kind": "clip", "path": "x", "colour": 1})
    config = VisionConfig("clip", hf_config=CLIP, grid_size=1, dtype="bfloat16")
    assert VisionConfig.from_dict(config.to_dict()) == config


def test_bfloat16_encoder_accepts_float32_pixels():
    encoder = _build("clip", CLIP, dtype="bfloat16")
    features = encoder(_pixels(encoder))
    assert features.dtype == torch.bfloat16 and torch.isfinite(features.float()).all()
