"""Official VisualRWKV-7.00 vision weights -> our HF-class stack, checked against the reference code
itself: timm (DINOv2 with registers + LayerScale; SigLIP without a class token) and segment_anything's
ImageEncoderViT, tiny and random, imported through the torchvision stand-in (SPEC §4.5, §5.2)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

import torchvision_standin
from visualrwkv.rwkv.checkpoint import CheckpointError
from visualrwkv.vision import official_v7
from visualrwkv.vision.encoders import VisionConfig, build_encoder

with torchvision_standin.installed():
    timm = pytest.importorskip("timm")
    sam_modeling = pytest.importorskip("segment_anything.modeling")

SIDE = 4  # every tiny tower yields a 4 x 4 grid, as the real ones a 32 x 32 one


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (LayerScale and norms included), so that a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name and name.endswith("weight") else 0))
    return module.eval()


def tiny_dino():
    # the released `vit_large_patch14_reg4_dinov2` recipe (4 registers, LayerScale, no_embed_class), shrunk
    return _randomise(timm.create_model("vit_large_patch14_reg4_dinov2", pretrained=False, img_size=14 * SIDE,
                                        embed_dim=128, depth=3, num_heads=2, num_classes=0), 1)


def tiny_siglip():
    # `vit_so400m_patch14_siglip_384` (no class token, MAP head, gelu-tanh), shrunk
    return _randomise(timm.create_model("vit_so400m_patch14_siglip_384", pretrained=False, img_size=14 * SIDE,
                                        embed_dim=128, depth=3, num_heads=2, num_classes=0), 2)


def tiny_sam():
    # ViT-B's structure: windowed blocks with global ones between, relative positions, the conv/LN2d neck
    encoder = sam_modeling.ImageEncoderViT(img_size=32 * SIDE, patch_size=16, embed_dim=128, depth=4, num_heads=2,
                                           mlp_ratio=4.0, out_chans=16, qkv_bias=True, use_rel_pos=True, window_size=4,
                                           global_attn_indexes=(1, 3),
                                           norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    return _randomise(encoder, 3)


def official_features(name: str, module, x: torch.Tensor) -> torch.Tensor:
    """What the official SamDinoSigLIPViTBackbone takes from each tower (SPEC §5.2)."""
    with torch.no_grad():
        if name in ("dinov2", "siglip"):
            # second-to-last block, no final norm, prefix tokens dropped (the official monkey-patch)
            return module.get_intermediate_layers(x, n={len(module.blocks) - 2})[0]
        neck = module(x)  # [B, C, 2S, 2S]
        b, c, h, w = neck.shape  # the official LosslessDownSampler: channel 4c + 2dh + dw
        down = neck.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2, w // 2, 4 * c)
        return down.reshape(b, -1, 4 * c)


@pytest.fixture(scope="module")
def towers():
    return {"dinov2": tiny_dino(), "siglip": tiny_siglip(), "sam": tiny_sam()}


@pytest.fixture(scope="module")
def official_vit(towers):
    """The `vit.*` part of a v7.00 checkpoint (keys relative to `vit.`)."""
    return {official_v7.PREFIXES[name] + k: v.clone() for name, m in towers.items() for k, v in m.state_dict().items()}


def _images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["dinov2", "siglip", "sam"])
def test_each_encoder_gives_the_official_features(name, towers, official_vit):
    parts = official_v7.split_components(official_vit)
    encoder = build_encoder(VisionConfig(name, hf_config=official_v7.CONFIGS[name](parts[name])))
    model = encoder.hf_model
    model.load_state_dict(official_v7.to_hf(name, parts[name], model.state_dict()), strict=True)
    x = _images(encoder.image_size)
    ours, ref = encoder(x), official_features(name, towers[name], x)
    assert ours.shape == ref.shape == (2, SIDE * SIDE, encoder.hidden_size)
    assert not encoder.interpolate_positions  # the stored table, used as it is
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert ref.abs().mean() > 0.1  # the comparison is not between near-zero tensors


def test_stack_loads_strictly_and_exports_the_same_tensors(towers, official_vit):
    config = official_v7.stack_config(official_vit)
    assert config.sam.hf_config["global_attn_indexes"] == [1, 3] and config.sam.hf_config["window_size"] == 4
    assert config.dinov2.hf_config["num_register_tokens"] == 4 and config.siglip.hf_config["vision_use_head"]
    stack = build_encoder(config)
    official_v7.load_official_stack(stack, official_vit)
    assert stack.hidden_size == 128 + 128 + 4 * 16 and stack.num_tokens == SIDE * SIDE
    exported = official_v7.official_stack_state_dict(stack)
    assert sorted(exported) == sorted(official_vit)
    for key, value in official_vit.items():
        assert torch.equal(exported[key], value), key
    # the stack's features are the three official ones, concatenated [DINO | SigLIP | SAM]
    pixels = {name: _images(part.image_size, seed=5) for name, part in stack.components()}
    packed = torch.zeros(2, *stack.pixel_shape)
    for i, (name, _) in enumerate(stack.components()):
        packed[:, 3 * i: 3 * i + 3, : pixels[name].shape[-1], : pixels[name].shape[-1]] = pixels[name]
    ref = torch.cat([official_features(n, towers[n], pixels[n]) for n in ("dinov2", "siglip", "sam")], dim=-1)
    torch.testing.assert_close(stack(packed), ref, atol=1e-4, rtol=0)


def test_wrong_keys_and_shapes_are_named(official_vit):
    stack = build_encoder(official_v7.stack_config(official_vit))
    broken = dict(official_vit)
    del broken["sam_featurizer.neck.2.weight"]
    with pytest.raises(official_v7.OfficialV7Error, match=r"vit\.sam_featurizer\.neck\.2\.weight"):
        official_v7.load_official_stack(stack, broken)
    broken = dict(official_vit) | {"dino_featurizer.blocks.1.attn.qkv.weight": torch.zeros(3 * 128, 64)}
    with pytest.raises(official_v7.OfficialV7Error, match=r"dino_featurizer\.blocks\.1\.attn\.qkv\.weight.*\(384, 64\)"):
        official_v7.load_official_stack(stack, broken)
    broken = dict(official_vit) | {"siglip_featurizer.extra": torch.zeros(1)}
    with pytest.raises(official_v7.OfficialV7Error, match=r"unexpected official key 'vit\.siglip_featurizer\.extra'"):
        official_v7.load_official_stack(stack, broken)
    no_sam = {k: v for k, v in official_vit.items() if not k.startswith("sam_featurizer.")}
    with pytest.raises(official_v7.OfficialV7Error, match=r"missing \['vit\.sam_featurizer\.\*'\]"):
        official_v7.stack_config(no_sam)


def test_preprocessing_is_the_official_resize(tmp_path, official_vit):
    """Official transforms: Resize((s, s), bicubic) on the PIL image (no aspect ratio, no crop), ToTensor,
    each tower's own Normalize; DINO and SigLIP at their size, SAM at its own."""
    stack = build_encoder(official_v7.stack_config(official_vit))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8))
    norms = {"dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "siglip": ((0.5,) * 3, (0.5,) * 3),
             "sam": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
    packed = stack.preprocess(image)
    inputs = stack.unpack(packed[None])
    for name, part in stack.components():
        size = part.image_size
        resized = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        mean, std = (np.array(v, dtype=np.float32) for v in norms[name])
        want = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())
        torch.testing.assert_close(inputs[name][0], want, atol=1e-6, rtol=0)
    assert (stack.image_size, stack.dinov2.image_size, stack.sam.image_size) == (32 * SIDE, 14 * SIDE, 32 * SIDE)


# ---- a whole tiny VisualRWKV-v0700 checkpoint -------------------------------------------------------
N_EMBD = 64


def _full_checkpoint(official_vit, projector: str = "mlp") -> dict[str, torch.Tensor]:
    from visualrwkv.testing import random_rwkv7_state_dict

    g = torch.Generator().manual_seed(7)
    width = 128 + 128 + 4 * 16
    if projector == "mlp":
        proj = {"proj.gate.weight": torch.randn(width, width, generator=g) / width ** 0.5,
                "proj.o_proj.weight": torch.randn(N_EMBD, width, generator=g) / width ** 0.5,
                "proj.ln_v.weight": 1 + 0.1 * torch.randn(N_EMBD, generator=g),
                "proj.ln_v.bias": 0.1 * torch.randn(N_EMBD, generator=g)}
    else:
        proj = {"proj.weight": torch.randn(N_EMBD, width, generator=g) / width ** 0.5}
    lm = random_rwkv7_state_dict(n_embd=N_EMBD, n_layer=2, seed=3)
    return ({"rwkv." + k: v for k, v in lm.items()} | proj | {"vit." + k: v for k, v in official_vit.items()})


@pytest.fixture(scope="module")
def v0700_file(official_vit, tmp_path_factory):
    path = tmp_path_factory.mktemp("v0700") / "VisualRWKV-v0700-tiny.pth"
    sd = _full_checkpoint(official_vit)
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "p.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


def _logits(model, picture) -> torch.Tensor:
    from visualrwkv.prompts import build_inference_prompt

    ids = build_inference_prompt("What is it?", model.config.image_position, tokenizer=model.tokenizer)
    return model.prefill(ids, [Image.open(picture)])[0]


def test_full_checkpoint_loads_strictly_answers_converts_and_round_trips(v0700_file, picture, tmp_path, capsys):
    from visualrwkv.cli import main
    from visualrwkv.engine.engine import Engine, ImageInput
    from visualrwkv.engine.sampling import SamplingParams
    from visualrwkv.model import VisualRWKV

    path, sd = v0700_file
    model = VisualRWKV.from_pretrained(path)
    cfg = model.config
    assert (cfg.vision.kind, cfg.projector, cfg.rwkv.version, cfg.rwkv.n_embd, cfg.rwkv.n_layer) == \
        ("stack", "mlp", 7, N_EMBD, 2)
    assert (cfg.scanning, cfg.image_position) == ("unidirection", "first")
    assert model.vit.num_tokens == SIDE * SIDE
    reference = _logits(model, picture)
    assert torch.isfinite(reference).all()

    greedy = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=8)
    with Engine(model, cache_bytes=0) as engine:
        answer = engine.ask("What is it?", ImageInput.from_path(picture), (), greedy).result().text
    assert isinstance(answer, str)

    directory, exported = tmp_path / "converted", tmp_path / "again.pth"
    assert main(["convert", str(path), str(directory)]) == 0
    converted = VisualRWKV.from_pretrained(directory)
    assert converted.config.to_dict() == model.config.to_dict() | {"vision": converted.config.vision.to_dict()}
    assert torch.equal(_logits(converted, picture), reference)
    flags = ["--temperature", "0", "--presence-penalty", "0", "--frequency-penalty", "0", "--max-tokens", "8"]
    capsys.readouterr()
    assert main(["ask", "--model", str(directory), "--image", str(picture), *flags, "What is it?"]) == 0
    assert capsys.readouterr().out == answer + "\n"

    assert main(["convert", str(directory), str(exported)]) == 0
    back = torch.load(exported, weights_only=True)
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert torch.equal(_logits(VisualRWKV.from_pretrained(exported), picture), reference)


def test_linear_projector_and_errors_name_the_key(official_vit, tmp_path, capsys):
    from visualrwkv.model import VisualRWKV

    sd = _full_checkpoint(official_vit, projector="linear")
    path = tmp_path / "VisualRWKV-v0700-linear.pth"
    torch.save(sd, path)
    assert VisualRWKV.from_pretrained(path).config.projector == "linear"

    wrong = dict(sd) | {"proj.weight": torch.zeros(N_EMBD, 300)}
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"projector takes 300-d features.*give 320"):
        VisualRWKV.from_pretrained(path)
    wrong = {k: v for k, v in sd.items() if k != "vit.siglip_featurizer.blocks.2.mlp.fc2.bias"}
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"vit\.siglip_featurizer\.blocks\.2\.mlp\.fc2\.bias"):
        VisualRWKV.from_pretrained(path)
    from visualrwkv.cli import main

    capsys.readouterr()
    assert main(["convert", str(path), str(tmp_path / "out")]) == 1  # a user error: one line, no traceback
    err = capsys.readouterr().err.strip()
    assert "vit.siglip_featurizer.blocks.2.mlp.fc2.bias" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()
    wrong = {k: v for k, v in sd.items() if k != "rwkv.blocks.1.att.k_k"}
    torch.save(wrong, path)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.att\.k_k"):
        VisualRWKV.from_pretrained(path)


def _round_trip(sd, tmp_path, name):
    """official .pth -> official .pth through `convert --dtype bfloat16`: the same keys and tensors."""
    from visualrwkv.cli import main

    src, out = tmp_path / name, tmp_path / ("again-" + name)
    torch.save(sd, src)
    assert main(["convert", str(src), str(out), "--dtype", "bfloat16"]) == 0
    back = torch.load(out, weights_only=True)
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_bf16_files_round_trip_for_v0700_and_v060(official_vit, tmp_path):
    from test_model_checkpoints import official_state_dict as v060_state_dict

    v0700 = {k: v.to(torch.bfloat16) for k, v in _full_checkpoint(official_vit).items()}
    _round_trip(v0700, tmp_path, "VisualRWKV-v0700-tiny.pth")
    v060 = {k: v for k, v in v060_state_dict(torch.bfloat16).items() if not k.endswith("position_ids")}
    _round_trip(v060, tmp_path, "VisualRWKV-v060-tiny.pth")  # (the optional CLIP position_ids buffer is not written)
