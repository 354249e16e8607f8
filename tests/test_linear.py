import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.ops import cpu_kernels
from visualrwkv.ops.cpu_kernels import MAX_ROWS
from visualrwkv.ops.linear import Linear, rows_matmul, split_count
from visualrwkv.testing import torch_threads

# The split is the fallback where the compiled product (tests/test_cpu_kernels.py) is unavailable


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    with torch_threads(2):
        yield


@torch.no_grad()
def test_split_only_for_few_row_fp32_cpu_products(two_threads):
    w = torch.randn(64, 96)
    assert split_count(torch.randn(1, 64), w) == 2
    assert split_count(torch.randn(2, 3, 64), w) == 2
    assert split_count(torch.randn(MAX_ROWS + 1, 64), w) == 1  # prefill: compute bound
    assert split_count(torch.randn(1, 64), w.t().contiguous().t()) == 1  # not contiguous
    assert split_count(torch.randn(1, 64).bfloat16(), w.bfloat16()) == 1
    assert split_count(torch.randn(1, 63), torch.randn(63, 8)) == 1  # rows do not divide among threads
    torch.set_num_threads(1)
    assert split_count(torch.randn(1, 64), w) == 1


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, MAX_ROWS + 2), half_in=st.integers(1, 80), out=st.integers(1, 70),
       lead=st.sampled_from([(), (1,), (2,)]))
def test_rows_matmul_is_the_product(rows, half_in, out, lead):
    g = torch.Generator().manual_seed(rows * 1000 + half_in * 10 + out)
    x = torch.randn(*lead, rows, 2 * half_in, generator=g)
    w = torch.randn(2 * half_in, out, generator=g)
    with torch_threads(2), torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_kernels, "library", lambda: None)
        got = rows_matmul(x, w)
    assert got.shape == (*lead, rows, out)
    torch.testing.assert_close(got, x @ w, rtol=1e-5, atol=1e-5)


def test_autograd_keeps_the_plain_product(two_threads):
    # training's results must not depend on the thread count (one process or several)
    x = torch.randn(1, 32, requires_grad=True)
    w = torch.randn(32, 12)
    assert split_count(x, w) == 1
    with torch.no_grad():
        assert split_count(x, w) == 2


@torch.no_grad()
@pytest.mark.parametrize("kernels", [False, True], ids=["split", "compiled"])
def test_linear_keeps_nn_linear_names_and_uses_the_fast_product_in_gemv_layout(kernels, monkeypatch):
    library = cpu_kernels.library
    monkeypatch.setattr(cpu_kernels, "library", library if kernels else lambda: None)
    if kernels and library() is None:
        pytest.skip("no C++ compiler")
    layer = Linear(32, 48)
    assert list(layer.state_dict()) == ["weight"] and layer.bias is None
    x = torch.randn(1, 1, 32)
    plain = layer(x)
    calls = []
    real_bmm, real_compiled = torch.bmm, cpu_kernels.rows_matmul
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append("split") or real_bmm(*a))
    monkeypatch.setattr(cpu_kernels, "rows_matmul",
                        lambda *a: (y := real_compiled(*a)) is not None and calls.append("compiled") or y)
    with torch_threads(2):
        layer(x)
        assert not calls  # [out, in] memory: torch's own linear
        layer.weight.data = layer.weight.data.t().contiguous().t()
        torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-6)
    assert calls == ["compiled" if kernels else "split"]  # [in, out] memory: the fast product
