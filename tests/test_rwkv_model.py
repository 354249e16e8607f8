import pytest
import torch

from visualrwkv import RWKV, RWKVConfig, RWKVState
from visualrwkv.testing import random_rwkv6

V = 1000  # a small vocabulary keeps these tests fast; the oracle test uses 65536


@pytest.fixture(scope="module")
def lm():
    return random_rwkv6(n_embd=128, n_layer=2, vocab_size=V, seed=3)


def tokens(B, T, seed=0):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_parallel_recurrent_and_chunked_prefill_agree(lm):
    x = tokens(2, 77)
    full, state_full = lm(x)
    # recurrent: one token per call
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = lm(x[:, t : t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5
    # chunked prefill continuing from a state
    a, state_a = lm(x[:, :30])
    b, state_b = lm(x[:, 30:], state_a)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-5
    for s in (state, state_b):
        assert rel_err(s.wkv, state_full.wkv) <= 1e-5
        assert rel_err(s.att_shift, state_full.att_shift) <= 1e-5


@torch.no_grad()
def test_embeddings_input_equals_token_input(lm):
    x = tokens(1, 20)
    by_ids, _ = lm(x)
    by_embs, _ = lm(lm.embed(x))
    assert torch.equal(by_ids, by_embs)


@torch.no_grad()
def test_logits_modes(lm):
    x = tokens(2, 9)
    full, _ = lm(x)
    last, _ = lm(x, logits="last")
    none, state = lm(x, logits="none")
    assert full.shape == (2, 9, V) and last.shape == (2, V) and none is None
    assert torch.allclose(last, full[:, -1], atol=1e-5)
    assert isinstance(state, RWKVState)


@torch.no_grad()
def test_state_is_a_value(lm):
    x = tokens(3, 10)
    _, state = lm(x)
    before = state.clone()
    lm(tokens(3, 4, seed=1), state)
    assert torch.equal(state.wkv, before.wkv) and torch.equal(state.att_shift, before.att_shift)
    # batch rows can be split and recombined
    rows = [state.select(i) for i in range(3)]
    again = RWKVState.cat(rows)
    assert torch.equal(again.wkv, state.wkv)
    nxt = tokens(3, 1, seed=2)
    batched, _ = lm(nxt, state)
    alone, _ = lm(nxt[1:2], state.select(1))
    assert rel_err(alone[0], batched[1]) <= 1e-5
    L, C, H = lm.config.n_layer, lm.config.n_embd, lm.config.n_head
    assert state.nbytes == 4 * 3 * L * (2 * C + H * 64 * 64)


def test_gradients_flow_and_checkpointing_is_equal(lm):
    x = tokens(2, 40)
    model = random_rwkv6(n_embd=128, n_layer=2, vocab_size=V, seed=3).train()

    def grads(checkpointing):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert set(plain) == {n for n, _ in model.named_parameters()}
    for n in plain:
        assert torch.isfinite(plain[n]).all(), n
        assert torch.allclose(plain[n], ckpt[n], rtol=1e-4, atol=1e-6), n


@torch.no_grad()
def test_bf16_is_close_to_fp32(lm):
    x = tokens(1, 50)
    ref, _ = lm(x)
    low = random_rwkv6(n_embd=128, n_layer=2, vocab_size=V, seed=3).to(torch.bfloat16)
    out, state = low(x)
    assert out.dtype == torch.bfloat16 and state.wkv.dtype == torch.float32
    assert rel_err(out.float(), ref) < 0.05


@torch.no_grad()
def test_bad_inputs_are_named(lm):
    with pytest.raises(ValueError, match="token id 5000"):
        lm(torch.tensor([[1, 5000]]))
    with pytest.raises(TypeError, match="LongTensor"):
        lm.embed(torch.tensor([[1, 2]], dtype=torch.int32))
    with pytest.raises(ValueError, match="embeddings"):
        lm(torch.zeros(1, 3, 7))
    _, state = lm(tokens(2, 3))
    with pytest.raises(ValueError, match="batch size"):
        lm(tokens(1, 3), state)


def test_config_defaults_follow_the_spec():
    cfg = RWKVConfig(n_embd=2048, n_layer=24)
    assert (cfg.dim_ffn, cfg.mix_rank, cfg.decay_rank, cfg.n_head) == (7168, 32, 64, 32)
    cfg = RWKVConfig(n_embd=4096, n_layer=32)
    assert (cfg.dim_ffn, cfg.mix_rank, cfg.decay_rank) == (14336, 64, 128)
    assert RWKVConfig(n_embd=256, n_layer=4).dim_ffn == 896
    with pytest.raises(ValueError, match="multiple of head_size"):
        RWKVConfig(n_embd=100, n_layer=1)


def test_initialisation_is_the_spec_one():
    model = RWKV(RWKVConfig(n_embd=128, n_layer=3, vocab_size=V))
    att = model.blocks[0].att
    assert att.time_decay[0, 0, 0].item() == pytest.approx(-6.0)
    assert att.time_decay[0, 0, -1].item() == pytest.approx(-1.0)
    assert torch.count_nonzero(att.time_maa_w1) == 0 and att.time_maa_w2.abs().max() <= 0.01
    assert model.blocks[2].att.time_faaaa.view(-1)[0].item() == pytest.approx(1.0 + 0.0)


def test_gemv_layout_keeps_values_names_and_results(lm, tmp_path):
    import copy

    from visualrwkv.rwkv.checkpoint import load_rwkv, save_rwkv

    fast = copy.deepcopy(lm).use_gemv_layout()
    head = fast.head.weight
    assert head.shape == lm.head.weight.shape and head.stride() == (1, head.shape[0])  # [in, out] in memory
    assert torch.equal(head, lm.head.weight) and fast.state_dict().keys() == lm.state_dict().keys()
    x = tokens(2, 7)
    with torch.no_grad():
        (a, sa), (b, sb) = lm(x), fast(x)
        assert rel_err(b, a) < 1e-5 and rel_err(sb.wkv, sa.wkv) < 1e-5
        step_a, _ = lm(x[:, :1], sa)
        step_b, _ = fast(x[:, :1], sb)
        assert rel_err(step_b, step_a) < 1e-5
    save_rwkv(fast, tmp_path / "m.safetensors")  # saved contiguous, loads like any checkpoint
    assert torch.equal(load_rwkv(tmp_path / "m.safetensors").head.weight, lm.head.weight)
    assert fast.to(torch.bfloat16).head.weight.stride() == head.stride()  # dtype casts keep the layout
