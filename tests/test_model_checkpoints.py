"""Loading the released checkpoint layouts (SPEC §4.2, §4.3), written here at tiny size."""

import pytest
import torch

from visualrwkv.cli import main
from visualrwkv.constants import IMAGE_TOKEN_INDEX
from visualrwkv.model import VisualRWKV, VisualRWKVConfig
from visualrwkv.rwkv.checkpoint import CheckpointError
from visualrwkv.rwkv.model import RWKVConfig
from visualrwkv.testing import random_rwkv6_state_dict
from visualrwkv.vision.encoders import VisionConfig

V = 65536  # the rwkv package and the real files use the full World vocabulary
C = 128
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=42, patch_size=14, hidden_act="quick_gelu")


def official_state_dict(dtype=torch.bfloat16):
    """A VisualRWKV-v060-style full state dict: rwkv.* + proj.weight + vit.<HF CLIPVisionModel keys>."""
    torch.manual_seed(0)
    reference = VisualRWKV(VisualRWKVConfig(rwkv=RWKVConfig(n_embd=C, n_layer=2, vocab_size=V),
                                            vision=VisionConfig("clip", hf_config=TINY_CLIP)))
    sd = {"rwkv." + k: v for k, v in random_rwkv6_state_dict(C, 2, V, seed=4).items()}
    sd["proj.weight"] = torch.randn(C, 32) * 0.3
    vit = reference.vit.official_state_dict()
    sd |= {"vit." + k: v for k, v in vit.items()}
    sd["vit.vision_model.embeddings.position_ids"] = torch.arange(10)[None]  # older transformers kept it
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    sd = official_state_dict()
    torch.save(sd, d / "VisualRWKV-v060-tiny.pth")
    # the official export.py split: the LM and the rest, both fp16
    torch.save({k[len("rwkv."):]: v.half() for k, v in sd.items() if k.startswith("rwkv.")}, d / "tiny_rwkv.pth")
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items() if not k.startswith("rwkv.")},
               d / "tiny_visual.pth")
    return d, sd


def prompt_and_image():
    ids = [24281, 59, 33] + [IMAGE_TOKEN_INDEX] + [11, 5585, 41693, 59]
    return ids, torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(2))


def test_full_checkpoint_loads_strictly(official):
    d, sd = official
    model = VisualRWKV.from_pretrained(d / "VisualRWKV-v060-tiny.pth")
    cfg = model.config
    assert (cfg.rwkv.n_embd, cfg.rwkv.n_layer, cfg.rwkv.vocab_size) == (C, 2, V)
    assert cfg.vision.kind == "clip" and cfg.projector == "linear" and cfg.scanning == "bidirection"
    assert model.vit.num_tokens == 10 and model.vit.patch_span == (0, 9)
    own = model.state_dict()
    assert torch.equal(own["proj.weight"], sd["proj.weight"].float())
    assert torch.equal(own["rwkv.blocks.1.att.key.weight"], sd["rwkv.blocks.1.att.key.weight"].float())
    vit = model.vit.official_state_dict()
    assert torch.equal(vit["vision_model.encoder.layers.1.mlp.fc2.weight"],
                       sd["vit.vision_model.encoder.layers.1.mlp.fc2.weight"].float())


def test_export_pair_equals_full_and_rwkv_package_logits(official):
    rwkv_model = pytest.importorskip("rwkv.model")
    d, _ = official
    full = VisualRWKV.from_pretrained(d / "VisualRWKV-v060-tiny.pth")
    pair = VisualRWKV.from_pretrained(d / "tiny_rwkv.pth")
    ids, pixels = prompt_and_image()
    with torch.no_grad():
        a, _ = full.prefill(ids, pixels)
        b, _ = pair.prefill(ids, pixels)
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # bf16 vs fp16 storage of the same weights
    # text-only logits of the exported LM equal the reference implementation's. The rwkv package
    # folds LN0 into emb.weight in the file's dtype (fp16 here), which rounds the embeddings to fp16;
    # fed the same values stored in fp32 it does no rounding, and the logits agree to 1e-4.
    export = torch.load(d / "tiny_rwkv.pth", weights_only=True)
    torch.save({k: v.float() for k, v in export.items()}, d / "tiny_rwkv_fp32.pth")
    text = [24281, 59, 33, 5585, 41693, 59, 22796, 261, 1000, 2000, 3000]
    with torch.no_grad():
        ours, _ = pair.rwkv(torch.tensor([text]))
    exact = rwkv_model.RWKV(model=str(d / "tiny_rwkv_fp32"), strategy="cpu fp32", verbose=False)
    ref_logits, _ = exact.forward(text, None, full_output=True)
    assert (ours[0] - ref_logits).abs().max().item() <= 1e-4
    folded_in_fp16 = rwkv_model.RWKV(model=str(d / "tiny_rwkv"), strategy="cpu fp32", verbose=False)
    ref16, _ = folded_in_fp16.forward(text, None, full_output=True)
    assert (ours[0] - ref16).abs().max().item() <= 1e-2


def test_save_pretrained_round_trip_and_convert_cli(official, tmp_path):
    d, _ = official
    assert main(["convert", str(d / "VisualRWKV-v060-tiny.pth"), str(tmp_path / "converted")]) == 0
    original = VisualRWKV.from_pretrained(d / "VisualRWKV-v060-tiny.pth")
    converted = VisualRWKV.from_pretrained(tmp_path / "converted")
    ids, pixels = prompt_and_image()
    with torch.no_grad():
        assert torch.equal(original.prefill(ids, pixels)[0], converted.prefill(ids, pixels)[0])
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_mismatches_are_named(official, tmp_path):
    _, sd = official
    bad = dict(sd)
    bad["rwkv.blocks.0.att.key.weight"] = torch.zeros(C, C + 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks.0.att.key.weight"):
        VisualRWKV.from_pretrained(tmp_path / "bad.pth")
    no_proj = {k: v for k, v in sd.items() if not k.startswith("proj.")}
    torch.save(no_proj, tmp_path / "noproj.pth")
    with pytest.raises(CheckpointError, match="no 'proj.' keys"):
        VisualRWKV.from_pretrained(tmp_path / "noproj.pth")
    bad_vit = dict(sd)
    del bad_vit["vit.vision_model.encoder.layers.0.mlp.fc1.bias"]
    torch.save(bad_vit, tmp_path / "badvit.pth")
    with pytest.raises(ValueError, match="mlp.fc1.bias"):
        VisualRWKV.from_pretrained(tmp_path / "badvit.pth")
    (tmp_path / "lonely_rwkv.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lonely_visual.pth"):
        VisualRWKV.from_pretrained(tmp_path / "lonely_rwkv.pth")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VisualRWKV.from_pretrained(tmp_path)


def transformers5_layout(sd):
    """The same weights as the official code writes them under transformers >= 5, whose CLIPVisionModel
    has no `vision_model` level: `vit.embeddings.*`, `vit.encoder.*`, `vit.pre_layrnorm.*`, `vit.post_layernorm.*`."""
    return {("vit." + k[len("vit.vision_model."):] if k.startswith("vit.vision_model.") else k): v for k, v in sd.items()}


def test_transformers5_key_layout_loads_the_same_model(official, tmp_path):
    d, sd = official
    new = transformers5_layout(sd)
    assert "vit.embeddings.patch_embedding.weight" in new and "vit.pre_layrnorm.weight" in new
    assert not any(k.startswith("vit.vision_model.") for k in new)
    torch.save(new, tmp_path / "VisualRWKV-v060-tf5.pth")
    old_model = VisualRWKV.from_pretrained(d / "VisualRWKV-v060-tiny.pth")
    new_model = VisualRWKV.from_pretrained(tmp_path / "VisualRWKV-v060-tf5.pth")
    assert new_model.config == old_model.config
    for (k, a), (k2, b) in zip(old_model.state_dict().items(), new_model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ids, pixels = prompt_and_image()
    with torch.no_grad():
        assert torch.equal(old_model.prefill(ids, pixels)[0], new_model.prefill(ids, pixels)[0])
    # the exported pair's *_visual.pth in the new layout loads too
    torch.save({k[len("rwkv."):]: v for k, v in sd.items() if k.startswith("rwkv.")}, tmp_path / "tf5_rwkv.pth")
    torch.save({k: v for k, v in new.items() if not k.startswith("rwkv.")}, tmp_path / "tf5_visual.pth")
    pair = VisualRWKV.from_pretrained(tmp_path / "tf5_rwkv.pth")
    with torch.no_grad():
        assert torch.equal(old_model.prefill(ids, pixels)[0], pair.prefill(ids, pixels)[0])


def test_a_weight_in_both_key_layouts_is_refused(official, tmp_path):
    _, sd = official
    both = dict(sd, **{"vit.embeddings.class_embedding": sd["vit.vision_model.embeddings.class_embedding"]})
    torch.save(both, tmp_path / "both.pth")
    with pytest.raises(ValueError, match="both key layouts"):
        VisualRWKV.from_pretrained(tmp_path / "both.pth")
    missing = transformers5_layout(sd)
    del missing["vit.encoder.layers.0.mlp.fc1.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="mlp.fc1.bias"):
        VisualRWKV.from_pretrained(tmp_path / "missing.pth")
