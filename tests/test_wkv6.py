import pytest
import torch

from visualrwkv.ops.wkv6 import wkv6, wkv6_chunked, wkv6_recurrent


def make_inputs(B, T, H, decay, seed=0, N=64):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    if decay == "weak":
        w_raw = torch.randn(B, T, H, N, generator=g) - 5
    elif decay == "strong":
        w_raw = 3 * torch.randn(B, T, H, N, generator=g) + 2
    else:  # both, including w_raw so large that exp overflows to inf
        w_raw = 4 * torch.randn(B, T, H, N, generator=g)
        w_raw[..., 0] = 200.0
    u = torch.randn(H, N, generator=g)
    s0 = torch.randn(B, H, N, N, generator=g)
    return r, k, v, -torch.exp(w_raw), u, s0


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("T", [1, 2, 17, 63, 100, 131])
@pytest.mark.parametrize("decay", ["weak", "strong", "mixed"])
@pytest.mark.parametrize("chunk", [16, 64])
def test_chunked_equals_recurrent(T, decay, chunk):
    r, k, v, lw, u, s0 = make_inputs(2, T, 2, decay, seed=T)
    y_ref, s_ref = wkv6_recurrent(r, k, v, lw, u, s0)
    y, s = wkv6_chunked(r, k, v, lw, u, s0, chunk_size=chunk)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


def test_chunked_is_exact_against_float64():
    r, k, v, lw, u, s0 = make_inputs(1, 200, 2, "mixed", seed=7)
    y64, s64 = wkv6_recurrent(*(t.double() for t in (r, k, v, lw, u, s0)))
    y, s = wkv6_chunked(r, k, v, lw, u, s0)
    assert rel_err(y, y64.float()) <= 2e-6
    assert rel_err(s, s64.float()) <= 2e-6


def test_state_carried_across_calls_equals_one_call():
    r, k, v, lw, u, s0 = make_inputs(1, 90, 2, "mixed", seed=3)
    y_full, s_full = wkv6(r, k, v, lw, u, s0)
    parts, s = [], s0
    for a, b in [(0, 37), (37, 38), (38, 90)]:
        y, s = wkv6(r[:, a:b], k[:, a:b], v[:, a:b], lw[:, a:b], u, s)
        parts.append(y)
    assert rel_err(torch.cat(parts, 1), y_full) <= 1e-5
    assert rel_err(s, s_full) <= 1e-5


def test_gradients_of_chunked_match_recurrent():
    inputs = [t.requires_grad_() for t in make_inputs(1, 40, 1, "mixed", seed=5)]
    y, s = wkv6_chunked(*inputs)
    grads = torch.autograd.grad((y.sin().sum() + s.cos().sum()), inputs)
    inputs_ref = [t.detach().clone().requires_grad_() for t in inputs]
    y_ref, s_ref = wkv6_recurrent(*inputs_ref)
    grads_ref = torch.autograd.grad((y_ref.sin().sum() + s_ref.cos().sum()), inputs_ref)
    for name, g, g_ref in zip("r k v log_w u s0".split(), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, g_ref) <= 1e-4, name


def test_input_state_is_not_modified():
    r, k, v, lw, u, s0 = make_inputs(1, 5, 1, "weak")
    before = s0.clone()
    wkv6(r, k, v, lw, u, s0)
    wkv6(r[:, :1], k[:, :1], v[:, :1], lw[:, :1], u, s0)
    assert torch.equal(s0, before)


def test_bad_state_shape_is_named():
    r, k, v, lw, u, s0 = make_inputs(1, 5, 1, "weak")
    with pytest.raises(ValueError, match="WKV state has shape"):
        wkv6(r, k, v, lw, u, s0[:, :, :32])


def _fla_on_cuda():
    from visualrwkv.ops.wkv6 import fla_kernel

    return torch.cuda.is_available() and fla_kernel() is not None


@pytest.mark.skipif(not _fla_on_cuda(), reason="needs CUDA and flash-linear-attention")
@pytest.mark.parametrize("decay", ["weak", "strong"])
def test_fla_kernel_on_cuda_matches_the_recurrent_form(decay):
    r, k, v, lw, u, s0 = (t.cuda() for t in make_inputs(2, 100, 2, decay))
    y, s = wkv6(r, k, v, lw, u, s0)  # the dispatch takes the Triton kernel for T > 1 on CUDA
    y_ref, s_ref = wkv6_recurrent(r, k, v, lw, u, s0)
    assert rel_err(y, y_ref) < 1e-3 and rel_err(s, s_ref) < 1e-3
