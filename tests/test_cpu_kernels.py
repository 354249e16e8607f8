"""The compiled CPU decoding kernels (ops/rwkv_cpu.cpp): built here, equal to the PyTorch step."""

import os
import shutil
import signal
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.ops import cpu_kernels
from visualrwkv.testing import random_rwkv6, torch_threads

HAS_COMPILER = bool(shutil.which("g++") or shutil.which("c++"))
pytestmark = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the PyTorch step is used")
V = 512


def make_lm(n_layer=3, seed=0):
    return random_rwkv6(128, n_layer, vocab_size=V, seed=seed)


def eager(monkeypatch):
    """Turn the compiled kernels off for the rest of a test (the reference PyTorch path)."""
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)


def test_the_kernels_build_where_there_is_a_compiler():
    assert cpu_kernels.library() is not None
    assert list(cpu_kernels.cache_dir().glob("*.tmp")) == []  # the atomic build leaves no partial files


def test_a_ctrl_c_during_the_build_stops_after_it_and_keeps_the_kernels(tmp_path, monkeypatch):
    """The build on the main thread, a SIGINT while the compiler runs: the compiler finishes, the library is in
    the cache, and the interrupt still reaches the caller (a chat stops its answer)."""
    monkeypatch.setenv("VISUALRWKV_CACHE", str(tmp_path))
    compiler = shutil.which("g++") or shutil.which("c++")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cpu_kernels._build(compiler)
    finally:
        timer.cancel()
    built = list((tmp_path / "kernels").glob("rwkv_cpu-*.so"))
    assert len(built) == 1 and cpu_kernels._build(compiler) == built[0]
    assert list((tmp_path / "kernels").glob("*.tmp")) == []


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, cpu_kernels.MAX_ROWS), n_in=st.integers(1, 150), n_out=st.integers(1, 300),
       threads=st.integers(1, 3), lead=st.sampled_from([(), (1,), (2,)]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rows_matmul_is_the_product(rows, n_in, n_out, threads, lead, dtype):
    if len(lead) and lead[0] * rows > cpu_kernels.MAX_ROWS:
        rows = 1
    g = torch.Generator().manual_seed(rows * 100_000 + n_in * 1000 + n_out)
    x = torch.randn(*lead, rows, n_in, generator=g).to(dtype)
    w = torch.randn(n_in, n_out, generator=g).to(dtype)
    with torch_threads(threads), torch.no_grad():
        got = cpu_kernels.rows_matmul(x, w)
    assert got is not None and got.shape == (*lead, rows, n_out) and got.dtype == dtype
    # bf16: the fp32 product of the same values, rounded once (ties may round either way: one bf16 step)
    want = (x.float() @ w.float()).to(dtype)
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == torch.float32 else 8e-3, atol=1e-4)


def test_rows_matmul_declines_what_it_does_not_compute():
    w = torch.randn(32, 8)
    x = torch.randn(1, 32)
    with torch.no_grad():
        assert cpu_kernels.rows_matmul(torch.randn(cpu_kernels.MAX_ROWS + 1, 32), w) is None  # compute bound
        assert cpu_kernels.rows_matmul(x, w.t().contiguous().t()) is None  # not [in, out] memory
        assert cpu_kernels.rows_matmul(x, w.bfloat16()) is None  # mixed dtypes
        assert cpu_kernels.rows_matmul(x.half(), w.half()) is None
        assert cpu_kernels.rows_matmul(x, w) is not None
    assert cpu_kernels.rows_matmul(x, w) is None  # autograd on: training keeps torch's product


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_step_equals_the_pytorch_step(batch, threads, monkeypatch):
    lm = make_lm(seed=batch).use_gemv_layout()
    g = torch.Generator().manual_seed(threads)
    prompt = torch.randint(0, V, (batch, 5), generator=g)
    tokens = torch.randint(0, V, (batch, 6), generator=g)

    def decode():
        outputs = []
        with torch_threads(threads), torch.no_grad():
            _, state = lm(prompt)  # the parallel form: not the step
            outputs.append(lm(tokens[:, :1])[0])  # from no state
            for t in range(tokens.shape[1]):
                logits, state = lm(tokens[:, t:t + 1], state)
                outputs.append(logits)
        return outputs, state

    taken = []
    step = cpu_kernels.decode_step
    monkeypatch.setattr(cpu_kernels, "decode_step", lambda *a: taken.append(r := step(*a)) or r)
    compiled, compiled_state = decode()
    assert len(taken) == 1 + tokens.shape[1] + 1 and all(r is not None for r in taken[1:])
    eager(monkeypatch)
    reference, reference_state = decode()
    for got, want in zip(compiled, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for name in ("att_shift", "wkv", "ffn_shift"):
        torch.testing.assert_close(getattr(compiled_state, name), getattr(reference_state, name), rtol=1e-4, atol=1e-4)


def widened(lm):
    """The fp32 model with the same values as bf16 `lm`: the reference for its compiled step."""
    wide = make_lm()
    wide.load_state_dict({k: v.float() for k, v in lm.state_dict().items()})
    return wide.use_gemv_layout()


@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_compiled_bf16_step_is_the_fp32_step_on_the_widened_weights(batch, monkeypatch):
    lm = make_lm(seed=batch).to(torch.bfloat16).use_gemv_layout()
    wide = widened(lm)
    g = torch.Generator().manual_seed(batch)
    _, state = lm(torch.randint(0, V, (batch, 5), generator=g))  # bf16 shifts, fp32 WKV
    x = lm.emb(torch.randint(0, V, (batch, 1), generator=g))
    hidden, new = cpu_kernels.decode_step(lm, x, state)
    assert hidden.dtype == torch.float32 and new.att_shift.dtype == new.ffn_shift.dtype == torch.bfloat16
    eager(monkeypatch)
    want_logits, want = wide(x.float(), state.to(dtype=torch.float32))
    torch.testing.assert_close(wide.project(hidden), want_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new.wkv, want.wkv, rtol=1e-4, atol=1e-4)
    for name in ("att_shift", "ffn_shift"):  # the fp32 values, rounded once
        torch.testing.assert_close(getattr(new, name), getattr(want, name).bfloat16(), rtol=8e-3, atol=1e-4)


@torch.no_grad()
def test_compiled_bf16_decoding_is_closer_to_fp32_than_torchs_bf16(monkeypatch):
    """bf16 weights with fp32 arithmetic (compiled) against bf16 arithmetic throughout (eager)."""
    lm = make_lm().to(torch.bfloat16).use_gemv_layout()
    wide = widened(lm)
    tokens = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))

    def decode(model):
        logits, state = [], None
        for t in range(tokens.shape[1]):
            out, state = model(tokens[:, t:t + 1], state)
            logits.append(out.float())
        return torch.cat(logits, 1)

    compiled = decode(lm)
    eager(monkeypatch)
    reference, torch_bf16 = decode(wide), decode(lm)
    compiled_error = (compiled - reference).abs().max()
    assert compiled_error < 0.05 * reference.abs().max()
    assert compiled_error < 0.5 * (torch_bf16 - reference).abs().max()


@torch.no_grad()
def test_compiled_step_leaves_its_inputs_alone():
    lm = make_lm().use_gemv_layout()
    _, state = lm(torch.randint(0, V, (2, 4)))
    before = state.clone()
    x = torch.randn(2, 1, 128)
    x_before = x.clone()
    hidden, new = cpu_kernels.decode_step(lm, x, state)
    assert torch.equal(x, x_before) and all(torch.equal(a, b) for a, b in
                                            zip((state.att_shift, state.wkv, state.ffn_shift),
                                                (before.att_shift, before.wkv, before.ffn_shift)))
    assert not torch.equal(new.wkv, state.wkv) and hidden.shape == (2, 1, 128)


def test_compiled_step_declines_what_it_does_not_compute():
    lm = make_lm()
    x = torch.randn(1, 1, 128)
    with torch.no_grad():
        assert cpu_kernels.decode_step(lm, x, None) is None  # [out, in] weights: the layout it does not read
        lm.use_gemv_layout()
        assert cpu_kernels.decode_step(lm, x, None) is not None
        assert cpu_kernels.decode_step(lm, torch.randn(1, 2, 128), None) is None  # a prompt, not a step
        assert cpu_kernels.decode_step(lm, torch.randn(cpu_kernels.MAX_ROWS + 1, 1, 128), None) is None
        assert cpu_kernels.decode_step(lm, x.bfloat16(), None) is None  # not the model's dtype
        lm.blocks[1].att.time_faaaa.data = lm.blocks[1].att.time_faaaa.data.half()
        assert cpu_kernels.decode_step(lm, x, None) is None  # a float16 parameter: not a kind it reads
        lm.blocks[1].att.time_faaaa.data = lm.blocks[1].att.time_faaaa.data.bfloat16()
        assert cpu_kernels.decode_step(lm, x, None) is not None  # weights of two dtypes: each read as it is
        assert cpu_kernels.decode_step(lm.to(torch.bfloat16), x.bfloat16(), None) is not None
        assert cpu_kernels.decode_step(lm.half(), x.half(), None) is None
    assert cpu_kernels.decode_step(make_lm().use_gemv_layout(), x, None) is None  # autograd on


@torch.no_grad()
def test_compiled_step_follows_changed_parameters(monkeypatch):
    lm = make_lm().use_gemv_layout()
    x = torch.randint(0, V, (1, 1))
    first, _ = lm(x)
    # a new Parameter object, and new memory under an old one: both must be read
    lm.blocks[1].ffn.key.weight = torch.nn.Parameter(torch.randn(448, 128).t().contiguous().t())
    lm.blocks[0].att.key.weight.data = (2 * lm.blocks[0].att.key.weight).t().contiguous().t()
    second, _ = lm(x)
    assert not torch.allclose(first, second)
    eager(monkeypatch)
    torch.testing.assert_close(second, lm(x)[0], rtol=1e-4, atol=1e-4)


def test_a_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setenv("VISUALRWKV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    cpu_kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert cpu_kernels.library() is None
        assert list((tmp_path / "cache" / "kernels").iterdir()) == []  # no partial library left behind
        with torch.no_grad():  # and everything still runs, on the PyTorch path
            lm = make_lm().use_gemv_layout()
            assert lm(torch.randint(0, V, (1, 1)))[0].isfinite().all()
    finally:
        cpu_kernels.library.cache_clear()


def test_the_compiler_runs_in_its_own_session(tmp_path, monkeypatch):
    """A Ctrl-C at the terminal goes to the whole foreground process group; a compiler in that group
    would die of it and leave the kernels off for the rest of the process (CI caught a chat doing so)."""
    real = shutil.which("g++") or shutil.which("c++")
    wrapper = tmp_path / "cxx"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {real} --version\n'
                       f'{sys.executable} -c "import os; print(os.getsid(0))" > {tmp_path / "sid"}\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("VISUALRWKV_CACHE", str(tmp_path / "cache"))
    assert cpu_kernels._build(str(wrapper)).exists()
    assert int((tmp_path / "sid").read_text()) != os.getsid(0)


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    cpu_kernels.library.cache_clear()
    try:
        assert cpu_kernels.library() is None
    finally:
        cpu_kernels.library.cache_clear()


def test_a_built_library_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("VISUALRWKV_CACHE", str(tmp_path))
    compiler = shutil.which("g++") or shutil.which("c++")
    first = cpu_kernels._build(compiler)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels._build(compiler) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]


@torch.no_grad()
def test_shapes_the_kernel_would_misread_are_refused():
    lm = make_lm().use_gemv_layout()
    x = torch.randn(1, 1, 128)
    other = make_lm(n_layer=2).use_gemv_layout().new_state(1)  # a state of another model
    with pytest.raises(ValueError, match="state shapes"):
        cpu_kernels.decode_step(lm, x, other)
    # a parameter of another shape: the compiled step declines, and the PyTorch path reports it
    lm.blocks[2].ffn.key.weight = torch.nn.Parameter(torch.randn(64, 448).t())  # [448, 64], input-major
    assert cpu_kernels.decode_step(lm, x, None) is None


def test_rows_matmul_leaves_misfits_to_torch():
    with torch.no_grad():
        assert cpu_kernels.rows_matmul(torch.randn(1, 64), torch.randn(32, 8)) is None  # in 64 ≠ 32: not 2 rows
        assert cpu_kernels.rows_matmul(torch.randn(0, 32), torch.randn(32, 8)) is None  # no rows
        assert cpu_kernels.rows_matmul(torch.randn(1, 0), torch.randn(0, 8)) is None
        got = cpu_kernels.rows_matmul(torch.ones(32), torch.ones(32, 8))  # a vector, as torch.matmul takes it
        assert got.shape == (8,) and torch.equal(got, torch.full((8,), 32.0))
