import os
import pickle

import pytest
import torch

from visualrwkv import load_rwkv, save_rwkv
from visualrwkv.rwkv.checkpoint import CheckpointError, config_from_state_dict, detect_version
from visualrwkv.testing import random_rwkv6_state_dict

V = 512


@pytest.fixture()
def sd():
    return random_rwkv6_state_dict(128, 2, vocab_size=V, seed=1)


def test_config_inferred_from_shapes(sd):
    cfg = config_from_state_dict(sd)
    assert (cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_head, cfg.head_size) == (128, 2, V, 2, 64)
    assert (cfg.dim_ffn, cfg.mix_rank, cfg.decay_rank) == (448, 32, 64)


def test_pth_and_safetensors_round_trip(sd, tmp_path):
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "m.pth")
    lm = load_rwkv(tmp_path / "m.pth")
    assert lm.dtype == torch.float32
    save_rwkv(lm, tmp_path / "m.safetensors")
    again = load_rwkv(tmp_path / "m.safetensors")
    x = torch.randint(1, V, (1, 12))
    with torch.no_grad():
        assert torch.equal(lm(x)[0], again(x)[0])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    half = load_rwkv(tmp_path / "m.safetensors", dtype=torch.bfloat16)
    # only the large matrices are stored reduced; activations, norms, decays and LoRAs stay fp32 (rwkv/precision.py)
    assert half.dtype == torch.float32 and half.head.weight.dtype == half.emb.weight.dtype == torch.bfloat16
    assert half.blocks[0].att.key.weight.dtype == torch.bfloat16
    assert half.blocks[0].att.time_decay.dtype == half.blocks[0].att.time_maa_w1.dtype == torch.float32


def test_path_without_suffix_and_prefix(sd, tmp_path):
    torch.save({"rwkv." + k: v for k, v in sd.items()} | {"proj.weight": torch.zeros(128, 8)}, tmp_path / "full.pth")
    lm = load_rwkv(tmp_path / "full")  # the rwkv package's convention
    assert lm.config.n_layer == 2


def test_missing_unexpected_and_wrong_shape_are_named(sd, tmp_path):
    bad = dict(sd)
    del bad["blocks.1.att.gate.weight"]
    bad["blocks.1.att.extra"] = torch.zeros(1)
    bad["blocks.0.ffn.value.weight"] = torch.zeros(128, 7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_rwkv(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "blocks.1.att.gate.weight" in msg and "blocks.1.att.extra" in msg
    assert "blocks.0.ffn.value.weight: shape (128, 7)" in msg and "expected (128, 448)" in msg


@pytest.mark.parametrize("version,key", [("5", "blocks.0.att.ln_x.weight"), ("4", "blocks.0.att.time_mix_k")])
def test_other_rwkv_versions_are_refused(version, key, tmp_path):
    sd = {"emb.weight": torch.zeros(4, 8), key: torch.zeros(1)}
    assert detect_version(sd) == version
    torch.save(sd, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=f"RWKV-{version} checkpoint"):
        load_rwkv(tmp_path / "other.pth")


def test_rwkv7_files_are_read_and_an_incomplete_one_is_named(tmp_path):
    sd = {"emb.weight": torch.zeros(4, 8), "blocks.0.att.r_k": torch.zeros(1)}
    assert detect_version(sd) == "7"
    torch.save(sd, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="missing key 'blocks.0.ffn.key.weight'"):
        load_rwkv(tmp_path / "other.pth")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pth", "wb") as f:
        pickle.dump({"emb.weight": Exploit()}, f)
    with pytest.raises(CheckpointError):
        load_rwkv("evil.pth")
    assert not os.path.exists("pwned")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_rwkv(tmp_path / "nope.pth")
