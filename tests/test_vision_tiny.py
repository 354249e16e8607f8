"""The trainable TinyEncoder: contract, save/load, and that it quickly learns what/where/how many."""

import numpy as np
import pytest
import torch
from PIL import Image

from visualrwkv.testing import torch_threads
from visualrwkv.vision import TinyEncoder, TinyEncoderConfig, VisionConfig, build_encoder
from visualrwkv.vision.tiny import BatchInvariantConv2d


@pytest.fixture
def one_thread():
    # Two threads on a shared 2-core machine can be 10x slower than one when other work runs.
    with torch_threads(1):
        yield


def test_contract_and_gradients():
    torch.manual_seed(0)
    encoder = build_encoder(VisionConfig("tiny", tiny=TinyEncoderConfig(hidden_size=48, num_heads=4)))
    assert isinstance(encoder, TinyEncoder) and encoder.trainable and encoder.training
    assert (encoder.num_tokens, encoder.hidden_size, encoder.image_size) == (64, 48, 64)
    assert encoder.patch_grid == (8, 8) and encoder.patch_span == (0, 64)
    pixels = torch.randn(2, 3, 64, 64)
    features = encoder(pixels)
    assert tuple(features.shape) == (2, 64, 48) and features.requires_grad
    features.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    image = Image.new("RGB", (100, 30), (255, 0, 0))
    assert tuple(encoder.preprocess(image).shape) == (3, 64, 64)


def test_features_do_not_depend_on_the_batch():
    # Batched serving must give each request exactly what it would get alone.
    torch.manual_seed(0)
    encoder = TinyEncoder(TinyEncoderConfig(image_size=32, patch_size=8, hidden_size=64, num_heads=2)).eval()
    pixels = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        together = encoder(pixels)
        alone = torch.cat([encoder(pixels[i : i + 1]) for i in range(7)])
        pairs = torch.cat([encoder(pixels[i : i + 2]) for i in range(0, 7, 2)])
    assert torch.equal(together, alone) and torch.equal(together, pairs)


def test_batch_invariant_conv_equals_a_plain_conv():
    torch.manual_seed(0)
    for kernel, stride, padding in [(3, 2, 1), (4, 4, 0), (3, 1, 1)]:
        conv = BatchInvariantConv2d(6, 10, kernel_size=kernel, stride=stride, padding=padding)
        plain = torch.nn.Conv2d(6, 10, kernel_size=kernel, stride=stride, padding=padding)
        plain.load_state_dict(conv.state_dict())
        x = torch.randn(3, 6, 16, 12)
        torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="groups=1"):
        BatchInvariantConv2d(4, 4, kernel_size=3, groups=2)


def test_other_geometries():
    config = TinyEncoderConfig(image_size=32, patch_size=4, hidden_size=32, num_heads=2, num_layers=1)
    assert TinyEncoder(config)(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 32)
    config = TinyEncoderConfig(image_size=64, patch_size=16, hidden_size=32, num_heads=2, num_layers=0)
    assert TinyEncoder(config)(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 32)


def test_frozen_tiny_encoder():
    encoder = build_encoder(VisionConfig("tiny", trainable=False, tiny=TinyEncoderConfig(hidden_size=32, num_heads=2)))
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert not encoder(torch.zeros(1, 3, 64, 64)).requires_grad


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = TinyEncoder(TinyEncoderConfig(hidden_size=32, num_heads=2))
    encoder.save_pretrained(tmp_path)
    loaded = build_encoder(VisionConfig("tiny", path=str(tmp_path)))
    assert loaded.config == encoder.config
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(pixels), encoder(pixels), rtol=0, atol=0)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TinyEncoder.from_pretrained(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        TinyEncoderConfig(patch_size=6)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TinyEncoderConfig(image_size=60, patch_size=8)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TinyEncoderConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown"):
        TinyEncoderConfig.from_dict({"hidden_size": 32, "depth": 3})
    with pytest.raises(ValueError, match="either path"):
        VisionConfig("tiny", path="x", tiny=TinyEncoderConfig())


# ---- it learns: relations (where) and counts (how many) from mean-pooled tokens -------------------


def _scenes(count, rng, task):
    """32x32 scenes of 4x4 squares. 'relation': is the red square left of the blue one? 'count': 1..4 blue squares."""
    images = np.zeros((count, 3, 32, 32), np.float32)
    labels = np.zeros(count, np.int64)
    red, blue = np.array([1, -1, -1], np.float32), np.array([-1, -1, 1], np.float32)
    for i in range(count):
        if task == "relation":
            while True:
                (rx, ry), (bx, by) = rng.integers(0, 28, 2), rng.integers(0, 28, 2)
                if abs(rx - bx) >= 4:
                    break
            images[i, :, ry : ry + 4, rx : rx + 4] = red[:, None, None]
            images[i, :, by : by + 4, bx : bx + 4] = blue[:, None, None]
            labels[i] = int(rx < bx)
        else:
            n = rng.integers(1, 5)
            labels[i] = n - 1
            for cell in rng.choice(16, n, replace=False):  # one square per 8x8 cell: never touching
                row, col = divmod(cell, 4)
                y, x = row * 8 + rng.integers(0, 4), col * 8 + rng.integers(0, 4)
                images[i, :, y : y + 4, x : x + 4] = blue[:, None, None]
    return torch.from_numpy(images), torch.from_numpy(labels)


@pytest.mark.parametrize("task,classes", [("relation", 2), ("count", 4)])
def test_learns_relations_and_counts_in_a_few_dozen_steps(one_thread, task, classes):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_x, train_y = _scenes(512, rng, task)
    test_x, test_y = _scenes(256, rng, task)
    encoder = TinyEncoder(TinyEncoderConfig(image_size=32, patch_size=4, hidden_size=32, num_heads=2, num_layers=2))
    head = torch.nn.Linear(32, classes)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(80):
        index = torch.randint(0, len(train_x), (32,))
        loss = torch.nn.functional.cross_entropy(head(encoder(train_x[index]).mean(dim=1)), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (head(encoder(test_x).mean(dim=1)).argmax(dim=1) == test_y).float().mean().item()
    assert accuracy > 0.9, f"{task}: held-out accuracy {accuracy:.3f}"
