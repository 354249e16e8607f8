"""RWKV.compile_step: the PyTorch decoding step under torch.compile, with its eager fallback."""

import argparse
import warnings

import pytest
import torch

from visualrwkv.engine.model_args import add_model_arguments, load_model_from_args
from visualrwkv.rwkv import compiled_step
from visualrwkv.testing import random_rwkv6

V = 256


def make_lm():
    return random_rwkv6(64, 2, vocab_size=V, seed=3)


def counting(lm):
    """Count the steps the compiled step is asked for, and the ones it answers."""
    calls = {"asked": 0, "answered": 0}
    inner = lm.compiled_step

    def step(x, state):
        calls["asked"] += 1
        out = inner(x, state)
        calls["answered"] += out is not None
        return out

    lm.compiled_step = step
    return calls


@torch.no_grad()
def test_compiled_decoding_equals_eager_decoding():
    lm, eager = make_lm().compile_step(), make_lm()  # the default layout: the C++ step does not take it
    calls = counting(lm)
    g = torch.Generator().manual_seed(0)
    for batch in (1, 2):  # a new batch size compiles again
        prompt, tokens = torch.randint(0, V, (batch, 4), generator=g), torch.randint(0, V, (batch, 3), generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning: it really compiled
            _, state = lm(prompt)  # a prompt: eager
            _, want_state = eager(prompt)
            for t in range(tokens.shape[1]):
                got, state = lm(tokens[:, t:t + 1], state)
                want, want_state = eager(tokens[:, t:t + 1], want_state)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(state, name), getattr(want_state, name), rtol=1e-4, atol=1e-4)
    assert calls == {"asked": 8, "answered": 6}  # the two prompts are declined


def test_the_compiled_step_is_for_decoding_outside_autograd():
    lm = make_lm().compile_step()
    calls = counting(lm)
    lm(torch.randint(0, V, (1, 1)))  # autograd on: training keeps the eager blocks
    with torch.no_grad():
        lm(torch.randint(0, V, (1, 5)))  # a prompt
    assert calls == {"asked": 2, "answered": 0}


@torch.no_grad()
def test_the_cpu_kernels_come_first():
    lm = make_lm().use_gemv_layout().compile_step()
    calls = counting(lm)
    lm(torch.randint(0, V, (1, 1)))
    from visualrwkv.ops import cpu_kernels

    assert calls["asked"] == (0 if cpu_kernels.library() is not None else 1)


@torch.no_grad()
def test_a_failed_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(fn, mode=None):
        def run(*args):
            raise RuntimeError("backend unavailable\nmore detail")
        return run

    monkeypatch.setattr(compiled_step.torch, "compile", broken_compile)
    lm, eager = make_lm().compile_step(), make_lm()
    tokens = torch.randint(0, V, (1, 3))
    with pytest.warns(RuntimeWarning, match="could not compile the decoding step.*backend unavailable"):
        got, state = lm(tokens[:, :1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        got2, _ = lm(tokens[:, 1:2], state)
    want, want_state = eager(tokens[:, :1])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got2, eager(tokens[:, 1:2], want_state)[0])


def test_compile_flag_reaches_the_model():
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    assert load_model_from_args(p.parse_args(["--compile"])).rwkv.compiled_step is not None
    assert load_model_from_args(p.parse_args([])).rwkv.compiled_step is None
