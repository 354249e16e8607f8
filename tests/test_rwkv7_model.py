"""RWKV-7 in the one RWKV model: the three ways of running it agree; checkpoints and sizes from shapes."""

import logging

import pytest
import torch

from visualrwkv import RWKV, RWKVConfig, load_rwkv
from visualrwkv.rwkv.checkpoint import CheckpointError, config_from_state_dict, save_rwkv
from visualrwkv.rwkv.rwkv7 import ChannelMix7, TimeMix7
from visualrwkv.testing import random_rwkv7, random_rwkv7_state_dict

V = 1000


@pytest.fixture(scope="module")
def lm():
    return random_rwkv7(n_embd=128, n_layer=3, vocab_size=V, seed=3)


def tokens(B, T, seed=0):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_one_model_class_with_rwkv7_blocks(lm):
    assert isinstance(lm, RWKV) and lm.config.version == 7
    assert all(isinstance(b.att, TimeMix7) and isinstance(b.ffn, ChannelMix7) for b in lm.blocks)
    assert not hasattr(lm.blocks[0].att, "v0") and hasattr(lm.blocks[1].att, "v0")


@torch.no_grad()
def test_parallel_recurrent_and_chunked_prefill_agree(lm):
    x = tokens(2, 77)
    full, state_full = lm(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = lm(x[:, t : t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5
    a, state_a = lm(x[:, :30])
    b, state_b = lm(x[:, 30:], state_a)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-5
    for s in (state, state_b):
        assert rel_err(s.wkv, state_full.wkv) <= 1e-5
        assert rel_err(s.att_shift, state_full.att_shift) <= 1e-5
        assert rel_err(s.ffn_shift, state_full.ffn_shift) <= 1e-5


@torch.no_grad()
def test_embeddings_input_and_batch_rows_are_independent(lm):
    x = tokens(3, 20, seed=1)
    by_ids, _ = lm(x)
    assert torch.equal(lm(lm.embed(x))[0], by_ids)
    alone, _ = lm(x[1:2])
    assert rel_err(alone[0], by_ids[1]) <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(lm):
    model = random_rwkv7(n_embd=64, n_layer=2, vocab_size=V, seed=4).train()
    x = tokens(1, 20, seed=2)

    def grads():
        model.zero_grad()
        logits, _ = model(x)
        logits.float().pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing = True
    checkpointed = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
    assert all(g.abs().sum() > 0 for g in plain[1:])  # every parameter past the embedding gets a gradient


@torch.no_grad()
def test_bf16_runs_close_to_fp32(lm):
    x = tokens(1, 24, seed=5)
    ref, _ = lm(x)
    half = random_rwkv7(n_embd=128, n_layer=3, vocab_size=V, seed=3).to(torch.bfloat16)
    out, state = half(x)
    step, _ = half(x[:, :1], None)
    assert out.dtype == torch.bfloat16 and state.wkv.dtype == torch.float32
    assert rel_err(out.float(), ref) <= 0.05 and torch.isfinite(step).all()


def test_reset_parameters_is_the_trainers_init():
    model = RWKV(RWKVConfig(n_embd=128, n_layer=4, vocab_size=V, version=7))
    att = model.blocks[2].att
    assert torch.all(att.output.weight == 0) and torch.all(att.k_k == 0.85) and torch.all(att.v0 == 1)
    assert torch.all(model.blocks[0].ffn.value.weight == 0)
    with torch.no_grad():
        logits, _ = model(tokens(1, 8))
    assert torch.isfinite(logits).all()


def test_rank_defaults_follow_the_formula_and_shapes_win():
    assert [(c.decay_rank, c.a_rank, c.value_rank, c.gate_rank, c.dim_ffn) for c in (
        RWKVConfig(768, 12, version=7), RWKVConfig(1024, 24, version=7), RWKVConfig(2048, 24, version=7))] == [
        (64, 64, 32, 128, 3072), (64, 64, 32, 160, 4096), (96, 96, 64, 256, 8192)]
    # the 0B4 file predates the formula: 128 gate columns at C = 1024; shapes are what counts
    sd = random_rwkv7_state_dict(256, 2, V, decay_rank=64, a_rank=32, value_rank=64, gate_rank=96)
    cfg = config_from_state_dict(sd)
    assert (cfg.version, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.dim_ffn) == (7, 256, 2, 4, 64, 1024)
    assert (cfg.decay_rank, cfg.a_rank, cfg.value_rank, cfg.gate_rank) == (64, 32, 64, 96)
    with pytest.raises(ValueError, match="mix_rank is an RWKV-6 size"):
        RWKVConfig(256, 2, version=7, mix_rank=32)
    with pytest.raises(ValueError, match="RWKV-7 sizes"):
        RWKVConfig(256, 2, gate_rank=32)
    with pytest.raises(ValueError, match="version must be one of"):
        RWKVConfig(256, 2, version=5)


def test_official_pth_with_layer0_value_residual_loads(tmp_path, caplog):
    sd = random_rwkv7_state_dict(128, 2, V, seed=1, layer0_value_residual=True)
    assert "blocks.0.att.v1" in sd
    torch.save(sd, tmp_path / "RWKV-x070-World-tiny.pth")
    with caplog.at_level(logging.INFO, logger="visualrwkv.rwkv.checkpoint"):
        model = load_rwkv(tmp_path / "RWKV-x070-World-tiny.pth")
    assert "ignoring blocks.0.att.v0, blocks.0.att.v1, blocks.0.att.v2" in caplog.text
    assert torch.equal(model.blocks[1].att.v1, sd["blocks.1.att.v1"])
    # safetensors round trip, with the config (version included) in the metadata
    save_rwkv(model, tmp_path / "lm.safetensors")
    again = load_rwkv(tmp_path / "lm.safetensors")
    assert again.config == model.config and again.config.version == 7
    x = tokens(1, 10)
    with torch.no_grad():
        assert torch.equal(again(x)[0], model(x)[0])


def test_load_errors_name_keys_and_shapes(tmp_path):
    sd = random_rwkv7_state_dict(128, 2, V, seed=2)
    bad = dict(sd)
    bad["blocks.1.att.k_a"] = torch.zeros(1, 1, 64)
    del bad["blocks.1.ffn.x_k"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_rwkv(tmp_path / "bad.pth")
    assert "blocks.1.ffn.x_k" in str(e.value) and "blocks.1.att.k_a: shape (1, 1, 64)" in str(e.value)
    no_r_k = {k: v for k, v in sd.items() if k != "blocks.0.att.r_k"}
    torch.save(no_r_k, tmp_path / "no_r_k.pth")
    with pytest.raises(CheckpointError, match="missing key 'blocks.0.att.r_k'"):
        load_rwkv(tmp_path / "no_r_k.pth")


def test_convert_cli_writes_a_safetensors_lm(tmp_path, capsys):
    from visualrwkv.cli import main

    sd = random_rwkv7_state_dict(128, 2, V, seed=6, layer0_value_residual=True)
    torch.save(sd, tmp_path / "RWKV-x070-World-tiny.pth")
    assert main(["convert", str(tmp_path / "RWKV-x070-World-tiny.pth"), str(tmp_path / "lm.safetensors"),
                 "--dtype", "bfloat16"]) == 0
    assert "RWKV-7 C=128 L=2 H=2 vocabulary 1000" in capsys.readouterr().out
    converted = load_rwkv(tmp_path / "lm.safetensors", dtype=torch.bfloat16)
    assert converted.config.version == 7 and torch.equal(converted.head.weight, sd["head.weight"].bfloat16())
    assert main(["convert", str(tmp_path / "RWKV-x070-World-tiny.pth"), str(tmp_path / "out-dir")]) == 1
    assert "converts to one file; give OUT ending in .safetensors" in capsys.readouterr().err
