"""The compiled decode step for RWKV-7, and for models whose tensors differ in kind (rwkv/precision.py:
bf16 or int8/int4 large matrices beside fp32 vectors and LoRAs), against the PyTorch step."""

import ctypes
import shutil
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.ops import cpu_kernels
from visualrwkv.ops.quant import QuantizedLinear
from visualrwkv.rwkv.checkpoint import config_from_state_dict, drop_ignored_keys, load_rwkv
from visualrwkv.rwkv.model import RWKV
from visualrwkv.rwkv.precision import set_precision
from visualrwkv.testing import fp32_rounding_excess, random_rwkv6, random_rwkv7_state_dict, torch_threads

HAS_COMPILER = bool(shutil.which("g++") or shutil.which("c++"))
pytestmark = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the PyTorch step is used")
V = 512
RWKV7_CASES = {
    "C128-L3": dict(n_embd=128, n_layer=3),
    # the 0B4 file's ranks (not the formula's) and the unused layer-0 v0/v1/v2 some files carry
    "C256-L3-0B4ranks-v0": dict(n_embd=256, n_layer=3, decay_rank=64, a_rank=64, value_rank=32, gate_rank=128,
                                layer0_value_residual=True),
}


def rwkv7(case: str, seed: int = 0) -> RWKV:
    sd = random_rwkv7_state_dict(vocab_size=V, seed=seed, **RWKV7_CASES[case])
    sd = drop_ignored_keys(sd)
    lm = RWKV(config_from_state_dict(sd))
    lm.load_state_dict(sd)
    return lm.eval()


def pytorch_step(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)


def decode(lm, batch, threads, seed=0, steps=5):
    """Logits of a 5-token prompt (parallel form), then `steps` single tokens; and the final state. Also
    how many of the single tokens the compiled step took."""
    g = torch.Generator().manual_seed(seed)
    prompt, tokens = torch.randint(0, V, (batch, 5), generator=g), torch.randint(0, V, (batch, steps), generator=g)
    taken = []
    step = cpu_kernels.decode_step

    def counting(*a):
        taken.append(r := step(*a))
        return r

    outputs = []
    with torch_threads(threads), torch.no_grad():
        cpu_kernels.decode_step = counting
        try:
            _, state = lm(prompt)
            for t in range(steps):
                logits, state = lm(tokens[:, t:t + 1], state)
                outputs.append(logits.float())
        finally:
            cpu_kernels.decode_step = step
    return torch.cat(outputs, 1), state, sum(r is not None for r in taken)


def assert_states_close(got, want, tol):
    for name in ("att_shift", "wkv", "ffn_shift"):
        torch.testing.assert_close(getattr(got, name).float(), getattr(want, name).float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", sorted(RWKV7_CASES))
@pytest.mark.parametrize("batch,threads", [(1, 1), (1, 2), (3, 2)])
def test_rwkv7_compiled_step_equals_the_pytorch_step(case, batch, threads, monkeypatch):
    lm = rwkv7(case, seed=batch).use_gemv_layout()
    got, got_state, taken = decode(lm, batch, threads)
    assert taken == 5  # every single token went through the compiled step
    pytorch_step(monkeypatch)
    want, want_state, _ = decode(lm, batch, threads)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert_states_close(got_state, want_state, 1e-4)


@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_rwkv7_bf16_step_is_the_fp32_step_on_the_widened_weights(batch, monkeypatch):
    """All tensors bf16 (`.to(bfloat16)`): the compiled step's math stays fp32, so it equals the fp32 model
    of the same values (to 1e-4, as fp32 does); the carried shifts are rounded to bf16 once."""
    lm = rwkv7("C256-L3-0B4ranks-v0", seed=batch).to(torch.bfloat16).use_gemv_layout()
    wide = rwkv7("C256-L3-0B4ranks-v0", seed=batch)
    wide.load_state_dict({k: v.float() for k, v in lm.state_dict().items()})
    wide.use_gemv_layout()
    g = torch.Generator().manual_seed(batch)
    _, state = wide(torch.randint(0, V, (batch, 5), generator=g))
    x = lm.emb(torch.randint(0, V, (batch, 1), generator=g))
    hidden, new = cpu_kernels.decode_step(lm, x, state.to(dtype=torch.bfloat16))
    assert hidden.dtype == torch.float32 and new.att_shift.dtype == torch.bfloat16
    pytorch_step(monkeypatch)
    want_hidden, want = wide.run_blocks(x.float(), state.to(dtype=torch.bfloat16).to(dtype=torch.float32))
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new.wkv, want.wkv, rtol=1e-4, atol=1e-4)
    for name in ("att_shift", "ffn_shift"):
        torch.testing.assert_close(getattr(new, name), getattr(want, name).bfloat16(), rtol=8e-3, atol=1e-4)


def models(version: int, seed: int = 0) -> RWKV:
    return (random_rwkv6(128, 3, vocab_size=V, seed=seed) if version == 6 else rwkv7("C128-L3", seed)).use_gemv_layout()


@pytest.mark.parametrize("version", [6, 7])
@pytest.mark.parametrize("precision", ["bfloat16", "int8", "int4"])
@pytest.mark.parametrize("batch", [1, 2])
def test_reduced_precision_models_decode_by_the_compiled_step(version, precision, batch, monkeypatch):
    """The policy's models (large matrices reduced, all else fp32) once fell back to the PyTorch step.
    Both steps compute in fp32 over the same widened/dequantized values: equal up to summation order."""
    lm = set_precision(models(version, seed=batch), precision)
    got, got_state, taken = decode(lm, batch, threads=2, seed=batch)
    assert taken == 5
    pytorch_step(monkeypatch)
    want, want_state, _ = decode(lm, batch, threads=2, seed=batch)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert_states_close(got_state, want_state, 1e-4)


@torch.no_grad()
def test_a_model_saved_and_loaded_in_int8_decodes_by_the_compiled_step(tmp_path):
    lm = set_precision(models(7), "int8")
    from visualrwkv.rwkv.checkpoint import save_rwkv

    save_rwkv(lm, tmp_path / "lm.safetensors")
    loaded = load_rwkv(tmp_path / "lm.safetensors")
    x = lm.emb(torch.randint(0, V, (1, 1)))
    got, want = cpu_kernels.decode_step(loaded, x, None), cpu_kernels.decode_step(lm, x, None)
    assert got is not None and torch.equal(got[0], want[0])


@torch.no_grad()
def test_the_step_follows_a_change_of_precision():
    lm = models(6)
    x = lm.emb(torch.randint(0, V, (1, 1)))
    fp32, _ = cpu_kernels.decode_step(lm, x, None)
    set_precision(lm, "int4")  # replaces the linear modules under the same blocks
    assert isinstance(lm.blocks[0].att.key, QuantizedLinear)
    int4, _ = cpu_kernels.decode_step(lm, x, None)
    assert not torch.equal(fp32, int4) and (fp32 - int4).abs().max() < 0.2 * fp32.abs().max()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows,n_in,n_out,group", [(1, 64, 40, 32), (3, 96, 300, 32), (16, 48, 17, 16), (2, 64, 8, 64)])
@torch.no_grad()
def test_quantized_matmul_is_the_product_over_the_dequantized_weights(bits, rows, n_in, n_out, group):
    g = torch.Generator().manual_seed(rows + n_in + n_out + bits)
    layer = QuantizedLinear.from_float(torch.randn(n_out, n_in, generator=g), bits, group)
    x = torch.randn(rows, n_in, generator=g)
    for threads in (1, 2, 3):
        with torch_threads(threads):
            got = cpu_kernels.quantized_matmul(x, layer)
        torch.testing.assert_close(got, x @ layer.dequantize().t(), rtol=1e-5, atol=1e-5)
    strided = QuantizedLinear.from_float(torch.randn(n_out, n_in, generator=g), bits, group)
    strided.weight.data = torch.stack([strided.weight.data] * 2, 1)[:, 0]  # the same tiles, not contiguous
    assert cpu_kernels.quantized_matmul(x, strided) is None


@torch.no_grad()
def test_quantized_linear_uses_the_compiled_product_for_a_few_rows(monkeypatch):
    layer = QuantizedLinear.from_float(torch.randn(40, 64), 8)
    x = torch.randn(2, 64)
    calls = []
    product = cpu_kernels.quantized_matmul
    monkeypatch.setattr(cpu_kernels, "quantized_matmul", lambda *a: calls.append(1) or product(*a))
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), rtol=1e-5, atol=1e-5)
    assert calls == [1]


# ------------------------------------------------------------------------------------------------ integer sums
# The quantized products sum code x activation in integers (vpdpbusd, or its exact AVX2 emulation), on the
# activations split per block of input rows into signed bytes (x ≈ peak (d3 2^24 + ... + d0) / 2^30, plus two
# finer digits where a block holds a small value: cpu_products.h): the result must stay the fp32 product over
# the dequantized weights whatever the activations' magnitudes and the group size (groups padded to 8 rows in
# the tiles, blocks of at most 128 rows: larger groups are split, every digit's sum exact in fp32).

def _within_fp32_rounding(y, x, layer):
    return fp32_rounding_excess(y, x, layer.dequantize(torch.float64)) <= 1


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4]), group=st.sampled_from([2, 16, 34, 64, 256]), groups=st.integers(1, 3),
       out=st.integers(1, 80), rows=st.sampled_from([1, 3, 16]), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]),
       sparse=st.booleans(), seed=st.integers(0, 2**16))
@torch.no_grad()
def test_integer_sums_keep_the_fp32_product(bits, group, groups, out, rows, magnitude, sparse, seed):
    g = torch.Generator().manual_seed(seed)
    layer = QuantizedLinear.from_float(torch.randn(out, group * groups, generator=g), bits, group)
    x = magnitude * torch.randn(rows, group * groups, generator=g)
    if sparse:  # one large value a row among small ones and zeros: the split is relative to a block's peak
        x = x * (torch.rand(rows, group * groups, generator=g) < 0.3) * 1e-4
        x[:, 0] = magnitude
    with torch_threads(2):
        y = cpu_kernels.quantized_matmul(x, layer)
    assert _within_fp32_rounding(y, x, layer)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@torch.no_grad()
def test_a_non_finite_activation_gives_a_non_finite_row_and_leaves_the_others(bits, bad):
    layer = QuantizedLinear.from_float(torch.randn(70, 96), bits)
    x = torch.randn(3, 96)
    x[1, 40] = bad
    y = cpu_kernels.quantized_matmul(x, layer)
    assert not torch.isfinite(y[1]).any()
    assert torch.isfinite(y[[0, 2]]).all() and _within_fp32_rounding(y[[0, 2]], x[[0, 2]], layer)


def _cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


_AVX2 = ["-mavx2", "-mfma", "-mf16c"]


@pytest.mark.parametrize("flags", [["-mno-avx2"], _AVX2, [*_AVX2, "-mavx512vl", "-mavx512vnni"]],
                         ids=["portable", "avx2-no-vnni", "avx2-256-bit-vnni"])
@torch.no_grad()
def test_builds_without_vnni_or_simd_give_the_same_products(flags, tmp_path):
    """The paths other CPUs take, built here with those flags: plain loops without AVX2; 8 lanes with vpdpbusd
    emulated by vpmaddwd (AVX2 without VNNI); 8 lanes with a 256-bit vpdpbusd (AVX-VNNI, or AVX512-VNNI
    without AVX512BW)."""
    if "-mavx512vnni" in flags and not {"avx512_vnni", "avx512vl"} <= _cpu_flags():
        pytest.skip("this CPU has no 256-bit vpdpbusd to run that build")
    compiler = shutil.which("g++") or shutil.which("c++")
    target = tmp_path / "kernel.so"
    build = subprocess.run([compiler, "-O2", "-fopenmp", "-shared", "-fPIC", "-std=c++17", *flags,
                            str(cpu_kernels.SOURCE), "-o", str(target)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    lib = ctypes.CDLL(str(target))
    lib.visualrwkv_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(cpu_kernels.TensorArg),
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    g = torch.Generator().manual_seed(5)
    for bits in (8, 4):
        layer = QuantizedLinear.from_float(torch.randn(75, 96, generator=g), bits)
        x = torch.randn(2, 96, generator=g)
        y = torch.empty(2, 75)
        arg = cpu_kernels.TensorArg(layer.weight.data_ptr(), layer.weight_scales.data_ptr(),
                                    cpu_kernels.KINDS[bits], 32)
        lib.visualrwkv_matmul(x.data_ptr(), 2, ctypes.byref(arg), 96, 75, y.data_ptr(), 2)
        assert _within_fp32_rounding(y, x, layer), bits
