"""WKV7: the chunked parallel form and the one-token step against the token-by-token recurrence."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.ops.wkv7 import wkv7, wkv7_chunked, wkv7_recurrent, wkv7_step

DECAY_MIN = -math.exp(-0.5)  # RWKV-7's strongest log-decay per token (SPEC §3.1 step 3)


def inputs(B, T, H, N, seed=0, log_w=(DECAY_MIN, 0.0), rate=(0.0, 1.0), dtype=torch.float32):
    """RWKV-7-shaped inputs: a = −κ̂, b = κ̂⊙rate with κ̂ of unit norm per head; log-decays and rates
    uniform over the given ranges."""
    g = torch.Generator().manual_seed(seed)

    def rand(lo, hi):
        return lo + (hi - lo) * torch.rand(B, T, H, N, generator=g, dtype=dtype)

    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g, dtype=dtype), dim=-1)
    return r, rand(*log_w), k, v, -kk, kk * rand(*rate)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def reference(args, state=None):
    """The recurrence in float64: the exact values fp32 results are judged against."""
    return wkv7_recurrent(*(x.double() for x in args), None if state is None else state.double())


@pytest.mark.parametrize("T", [1, 2, 15, 17, 50, 100])
@pytest.mark.parametrize("chunk", [16, 32])
def test_chunked_equals_recurrent_at_any_length(T, chunk):
    args = inputs(2, T, 2, 32, seed=T)
    state = 0.5 * torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(9))
    y, S = wkv7_chunked(*args, state, chunk_size=chunk)
    y_ref, S_ref = reference(args, state)
    assert y.dtype == torch.float32 and S.shape == (2, 2, 32, 32)
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(S, S_ref) <= 1e-5


@pytest.mark.parametrize("log_w,rate", [
    ((-1e-7, 0.0), (0.0, 1.0)),  # no decay at all: the state only changes through the delta rule
    ((DECAY_MIN, DECAY_MIN + 1e-4), (0.0, 1.0)),  # the strongest RWKV-7 decay
    ((-20.0, 0.0), (0.0, 1.0)),  # far beyond RWKV-7's range, down to the floor
    ((DECAY_MIN, 0.0), (1 - 1e-6, 1.0)),  # rates at the top: each step erases κ̂'s direction entirely
    ((DECAY_MIN, 0.0), (0.0, 1e-6)),  # rates at the bottom: a pure decayed outer-product memory
], ids=["no-decay", "strongest", "floor", "rate-1", "rate-0"])
def test_chunked_is_exact_at_the_ends_of_the_ranges(log_w, rate):
    args = inputs(1, 120, 2, 32, seed=3, log_w=log_w, rate=rate)
    y, S = wkv7_chunked(*args)
    y_ref, S_ref = reference(args)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(S, S_ref) <= 1e-5


def test_state_carried_across_calls_equals_one_call():
    args = inputs(2, 90, 2, 32, seed=5)
    y_all, S_all = wkv7_chunked(*args)
    y1, S1 = wkv7_chunked(*(x[:, :37] for x in args))
    y2, S2 = wkv7_chunked(*(x[:, 37:] for x in args), S1)
    assert rel_err(torch.cat([y1, y2], 1), y_all) <= 1e-5
    assert rel_err(S2, S_all) <= 1e-5


def test_step_and_dispatch_equal_the_recurrence():
    args = inputs(3, 6, 2, 32, seed=7)
    state = torch.randn(3, 2, 32, 32)
    before = state.clone()
    S, ys = state, []
    for t in range(6):
        y, S = wkv7_step(*(x[:, t] for x in args), S)
        ys.append(y)
    y_ref, S_ref = reference(args, state)
    assert torch.equal(state, before)  # the step returns a new state
    assert rel_err(torch.stack(ys, 1), y_ref) <= 1e-5 and rel_err(S, S_ref) <= 1e-5
    y_one, S_one = wkv7(*(x[:, :1] for x in args), state)
    y_ref1, S_ref1 = reference([x[:, :1] for x in args], state)
    assert rel_err(y_one, y_ref1) <= 1e-6 and rel_err(S_one, S_ref1) <= 1e-6
    y_seq, S_seq = wkv7(*args, state)  # several tokens: the chunked form on CPU
    assert rel_err(y_seq, y_ref) <= 1e-5 and rel_err(S_seq, S_ref) <= 1e-5


def test_gradients_equal_the_recurrent_forms():
    """Every input's gradient (and the initial state's), float64, through a loss on y and the state."""
    args = [x.requires_grad_() for x in inputs(1, 40, 2, 16, seed=11, dtype=torch.float64)]
    state = torch.randn(1, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 40, 2, 16, dtype=torch.float64), torch.randn(1, 2, 16, 16, dtype=torch.float64)

    def grads(fn):
        y, S = fn(*args, state)
        loss = (y * weights[0]).sum() + (S * weights[1]).sum()
        return torch.autograd.grad(loss, [*args, state])

    chunked = grads(lambda *a: wkv7_chunked(*a, chunk_size=16))
    recurrent = grads(wkv7_recurrent)
    for name, g, g_ref in zip(["r", "log_w", "k", "v", "a", "b", "state"], chunked, recurrent):
        assert rel_err(g, g_ref) <= 1e-10, name


def test_wrong_state_shape_is_named():
    args = inputs(1, 4, 2, 16)
    with pytest.raises(ValueError, match=r"WKV state has shape \(1, 2, 16, 8\)"):
        wkv7(*args, torch.zeros(1, 2, 16, 8))


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 70), H=st.integers(1, 3), N=st.sampled_from([4, 8, 16]), seed=st.integers(0, 10**6),
       chunk=st.sampled_from([2, 4, 16, 64]))
def test_chunked_matches_recurrent_property(T, H, N, seed, chunk):
    args = inputs(2, T, H, N, seed=seed)
    y, S = wkv7_chunked(*args, chunk_size=chunk)
    y_ref, S_ref = reference(args)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(S, S_ref) <= 1e-5


def test_fla_call_passes_layout_state_orientation_and_decay_by_name():
    """No GPU here: stand-ins with the two signatures fla's chunk_rwkv7 has had, computing by the
    recurrence in fla's state orientation [key, value], check what `wkv7_fla` hands them."""
    import functools

    from visualrwkv.ops.wkv7 import wkv7_fla

    def fla_w(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True, cu_seqlens=None,
              head_first=False):
        assert scale == 1.0 and not head_first and output_final_state
        y, S = wkv7_recurrent(r, w, k, v, a, b, initial_state.transpose(-1, -2))
        return y, S.transpose(-1, -2)

    def fla_log_w(r, k, v, a, b, w=None, log_w=None, scale=1.0, initial_state=None, output_final_state=True,
                  cu_seqlens=None, head_first=False):
        assert w is None
        return fla_w(r, log_w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens, head_first)

    args = inputs(1, 5, 2, 8, seed=13)
    state = torch.randn(1, 2, 8, 8)
    y_ref, S_ref = reference(args, state)
    for kernel in (functools.partial(fla_w, head_first=False), fla_log_w):
        y, S = wkv7_fla(kernel, *args, state)
        assert rel_err(y, y_ref) <= 1e-6 and rel_err(S, S_ref) <= 1e-6
