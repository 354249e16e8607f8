"""Preprocessing: parity with HF's PIL image processors, shapes, validation, batching."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from visualrwkv.vision.preprocess import (
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

# (width, height): landscape, portrait, square, a long side that truncates, upscaling, a strip, 1x1
SHAPES = [(640, 427), (427, 640), (336, 336), (337, 1000), (100, 60), (50, 900), (1, 1)]


def _random_image(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def hf_image_processors():
    transformers = pytest.importorskip("transformers")
    clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    siglip = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return clip, siglip


@pytest.mark.parametrize("size,crop", [(336, 336), (224, 200)])
def test_clip_recipe_matches_hf_clip_image_processor(hf_image_processors, size, crop):
    clip_class, _ = hf_image_processors
    reference = clip_class(
        size={"shortest_edge": size},
        crop_size={"height": crop, "width": crop},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    ours = clip_preprocessor(size, crop)
    for seed, (width, height) in enumerate(SHAPES):
        image = _random_image(width, height, seed)
        expected = reference(image, return_tensors="np")["pixel_values"][0]
        got = ours(image)
        assert got.dtype == torch.float32 and tuple(got.shape) == (3, crop, crop)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, err_msg=f"{width}x{height}")


def test_resize_recipe_matches_hf_siglip_image_processor(hf_image_processors):
    _, siglip_class = hf_image_processors
    reference = siglip_class(size={"height": 40, "width": 30})
    ours = resize_preprocessor((40, 30), SIGLIP_MEAN, SIGLIP_STD)
    for seed, (width, height) in enumerate(SHAPES):
        image = _random_image(width, height, seed)
        expected = reference(image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours(image).numpy(), expected, atol=1e-5, err_msg=f"{width}x{height}")


def test_resize_ignores_aspect_and_uses_the_given_statistics():
    image = Image.new("RGB", (90, 30), (255, 128, 0))
    out = resize_preprocessor(16)(image)  # ImageNet statistics by default (DINOv2 / SAM)
    assert tuple(out.shape) == (3, 16, 16)
    expected = (np.array([255, 128, 0]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(1, 2)).numpy(), 0, atol=1e-5)  # a flat image stays flat


def test_clip_crop_is_centered():
    # 100x50 with a marker column in the exact middle: after the short side -> 50 and a 50 crop,
    # the crop offset (100-50)//2 = 25 puts the marker at column 25.
    pixels = np.zeros((50, 100, 3), np.uint8)
    pixels[:, 50] = 255
    out = clip_preprocessor(50)(Image.fromarray(pixels))
    brightest = out[0].mean(dim=0).argmax().item()
    assert brightest == 25


def test_non_rgb_inputs_and_paths_are_accepted(tmp_path):
    grey = Image.new("L", (20, 20), 100)
    as_rgb = Image.new("RGB", (20, 20), (100, 100, 100))
    recipe = clip_preprocessor(8)
    torch.testing.assert_close(recipe(grey), recipe(as_rgb))
    path = tmp_path / "x.png"
    as_rgb.save(path)
    torch.testing.assert_close(recipe(path), recipe(as_rgb))


def test_extreme_aspect_ratio_is_bounded_and_close_to_the_exact_result():
    strip = _random_image(4, 3000, seed=3)  # 750:1; the exact path would allocate 336 x 252000 px
    start = time.perf_counter()
    out = clip_preprocessor(336)(strip)
    assert time.perf_counter() - start < 2.0
    assert tuple(out.shape) == (3, 336, 336) and torch.isfinite(out).all()
    # Against the exact (slow) path just above the ratio limit, where the scales differ slightly.
    moderate = _random_image(7, 300, seed=4)  # 43:1; exact long side int(24*300/7) = 1028
    got = clip_preprocessor(24)(moderate).numpy()
    exact = np.asarray(moderate.resize((24, 1028), Image.Resampling.BICUBIC))[502:526]
    exact = ((exact / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    assert np.abs(got - exact).mean() < 0.01  # noise images: an unrelated crop differs by ~1


def test_batch_helper_stacks_and_validates():
    recipe = resize_preprocessor(12)
    images = [_random_image(10 + i, 7, seed=i) for i in range(3)]
    batch = recipe.batch(images)
    assert tuple(batch.shape) == (3, 3, 12, 12)
    torch.testing.assert_close(batch[1], recipe(images[1]))
    torch.testing.assert_close(preprocess_batch(images, recipe), batch)
    with pytest.raises(ValueError, match="at least one"):
        recipe.batch([])
    mixed = iter([torch.zeros(3, 2, 2), torch.zeros(3, 4, 4)])
    with pytest.raises(ValueError, match="different shapes"):
        preprocess_batch([0, 1], lambda _: next(mixed))


def test_invalid_recipes_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        ImagePreprocessor("squash", 10, CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="crop_size"):
        clip_preprocessor(10, 11)
    with pytest.raises(ValueError, match="std"):
        resize_preprocessor(10, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="3 values"):
        resize_preprocessor(10, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        resize_preprocessor((0, 5))


def test_recipe_is_picklable_for_dataloader_workers():
    import pickle

    recipe = clip_preprocessor(16)
    image = _random_image(30, 20, seed=9)
    torch.testing.assert_close(pickle.loads(pickle.dumps(recipe))(image), recipe(image))
