"""Compiled CPU decoding: rwkv6_cpu.cpp, built on first use with the machine's C++ compiler.

Why hand-written: a decoding step is bound by reading the weights once (~590 MB per token for the
0.1B-class model in fp32), and eager PyTorch loses a third of the step to ~2,500 small operator calls
and the rest to one-core BLAS products; `torch.compile` measured slower still (docs/benchmarks.md).
The kernel runs all layers of a step in one call, each product streaming its weight on every thread.
It reads fp32 or bf16 weights (half the bytes; the arithmetic stays fp32 either way).

The build is plain g++ (no torch headers, ~1 s) into a per-user cache, keyed by the source, the flags,
the compiler and the CPU, and written atomically; the library is loaded with ctypes (which releases
the GIL during the call). Whenever it cannot be used (no compiler, not Linux-like, a build error,
VISUALRWKV_CPU_KERNELS=0) everything falls back to the PyTorch path, with one warning saying why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
import weakref
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("rwkv6_cpu.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
ENV_SWITCH = "VISUALRWKV_CPU_KERNELS"  # "0" turns the compiled kernels off
MAX_ROWS = 16  # beyond this many rows a product is no longer bound by reading the weights
WEIGHT_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the weights the kernels read: their `bf16_weights` flag

# per layer, in the order of the `Param` enum in rwkv6_cpu.cpp (attribute paths under a Block)
LAYER_PARAMETERS = (
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
    "att.time_maa_g", "att.time_maa_w1", "att.time_maa_w2",
    "att.time_decay", "att.time_decay_w1", "att.time_decay_w2", "att.time_faaaa",
    "att.receptance.weight", "att.key.weight", "att.value.weight", "att.gate.weight", "att.output.weight",
    "att.ln_x.weight", "att.ln_x.bias",
    "ffn.time_maa_k", "ffn.time_maa_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight",
)
_p = ctypes.c_void_p
_i = ctypes.c_int64
_f = ctypes.c_float


def cache_dir() -> Path:
    root = os.environ.get("VISUALRWKV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "visualrwkv")
    return Path(root) / "kernels"


def _cpu_fingerprint() -> str:
    # -march=native code must not be reused on a CPU with other instruction sets (a shared home)
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, _cpu_fingerprint()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"rwkv6_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    print(f"compiling the CPU kernel (once, into {target.parent})…", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees the whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None (with one warning) where they cannot be had."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None or platform.system() == "Windows":
        warnings.warn("no C++ compiler found: decoding uses the slower PyTorch step", RuntimeWarning, stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"the compiled CPU kernels could not be built ({error}); decoding uses the slower PyTorch step",
                      RuntimeWarning, stacklevel=2)
        return None
    lib.visualrwkv_rows_matmul.argtypes = [ctypes.c_int, _p, _i, _p, _i, _i, _p, ctypes.c_int]
    lib.visualrwkv_rows_matmul.restype = None
    lib.visualrwkv_rwkv6_step.argtypes = ([ctypes.c_int] + [_i] * 8 + [ctypes.POINTER(_p)] + [_p] * 2 + [_f, _f]
                                          + [_p] * 7 + [ctypes.c_int])
    lib.visualrwkv_rwkv6_step.restype = None
    if lib.visualrwkv_params_per_layer() != len(LAYER_PARAMETERS):
        raise RuntimeError("rwkv6_cpu.cpp and LAYER_PARAMETERS disagree on the layer parameters")
    return lib


def few_rows(x: Tensor, w: Tensor) -> bool:
    """A product the kernels take: fp32 or bf16 (x and w alike) on CPU, outside autograd, 1 to MAX_ROWS
    rows, w [in, out] contiguous. Anything else (including shapes that do not fit) goes to torch, which
    computes it or says what is wrong."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in WEIGHT_DTYPES
            and w.dtype == x.dtype and w.dim() == 2 and w.is_contiguous() and w.numel() > 0
            and x.dim() >= 1 and x.shape[-1] == w.shape[0] and 0 < x.numel() <= MAX_ROWS * w.shape[0])


def rows_matmul(x: Tensor, w: Tensor) -> Tensor | None:
    """x [..., in] @ w [in, out] by the compiled product; None where it does not apply. bf16 rows are
    widened, the sums taken in fp32 and rounded once at the end (as torch's bf16 product does)."""
    if not few_rows(x, w) or (lib := library()) is None:
        return None
    rows = x.reshape(-1, w.shape[0]).float().contiguous()
    y = torch.empty(rows.shape[0], w.shape[1])
    lib.visualrwkv_rows_matmul(WEIGHT_DTYPES[w.dtype], rows.data_ptr(), rows.shape[0], w.data_ptr(), w.shape[0],
                               w.shape[1], y.data_ptr(), torch.get_num_threads())
    return y.to(x.dtype).view(*x.shape[:-1], w.shape[1])


class _Pointers:
    """Per model: where the step's parameters live. Which module holds each parameter is looked up once
    per set of blocks (`get_parameter` costs ~10 us a name); the layout checks rerun only when a
    parameter or its memory changed (`use_gemv_layout`, `.to()`, loading with assign=True)."""

    def __init__(self, model, blocks: tuple):
        self.blocks = blocks
        # the shapes the kernel assumes, from the block definition itself (on the meta device: no memory)
        with torch.device("meta"):
            shapes = dict(type(blocks[-1])(model.config, len(blocks) - 1).named_parameters())
        self.slots = []  # (module, parameter name, whether it is an nn.Linear weight, expected shape)
        for block in blocks:
            for name in LAYER_PARAMETERS:
                module, _, attribute = name.rpartition(".")
                owner = block.get_submodule(module)
                self.slots.append((owner, attribute, isinstance(owner, torch.nn.Linear), shapes[name].shape))
        self.tensors: list[Tensor] = []
        self.addresses: list[int] = []
        self.found: tuple[ctypes.Array, torch.dtype] | None = None

    def get(self) -> tuple[ctypes.Array, torch.dtype] | None:
        tensors = [module._parameters.get(attribute) for module, attribute, _, _ in self.slots]
        if any(t is None for t in tensors):  # a layer wrapped by an unmerged LoRA adapter: the PyTorch path
            self.tensors, self.addresses, self.found = [], [], None
            return None
        addresses = [t.data_ptr() for t in tensors]
        if addresses != self.addresses or any(a is not b for a, b in zip(tensors, self.tensors)):
            self.tensors, self.addresses = tensors, addresses
            dtype = tensors[0].dtype
            fits = dtype in WEIGHT_DTYPES and all(
                t.dtype == dtype and t.device.type == "cpu" and t.shape == shape
                and (t.t() if linear else t).is_contiguous() for t, (_, _, linear, shape) in zip(tensors, self.slots))
            self.found = ((ctypes.c_void_p * len(addresses))(*addresses), dtype) if fits else None
        return self.found


_pointers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def forget_layers(model) -> None:
    """Drop what is known of `model`'s layers, after they were replaced (adding or merging a LoRA adapter)."""
    _pointers.pop(model, None)


def layer_pointers(model) -> tuple[ctypes.Array, torch.dtype] | None:
    """The addresses of the parameters the step reads and their one dtype, or None if they are not all
    fp32 or all bf16 CPU memory in the layout the step takes: nn.Linear weights input-major
    (`RWKV.use_gemv_layout`), all else contiguous."""
    blocks = tuple(model.blocks)
    cached = _pointers.get(model)
    if cached is None or len(cached.blocks) != len(blocks) or any(a is not b for a, b in zip(cached.blocks, blocks)):
        cached = _pointers[model] = _Pointers(model, blocks)
    return cached.get()


def rwkv6_step(model, x: Tensor, state):
    """One token [B, 1, C] through every layer of `model` (an RWKV) by the compiled step.

    Returns (hidden [B, 1, C] fp32, before ln_out; the new RWKVState, shifts in x's dtype), or None
    where the step does not apply (an RWKV-7 model, autograd on, weights neither all fp32 nor all bf16 CPU memory in the
    GEMV layout, x not in their dtype, more than MAX_ROWS rows). With bf16 weights the arithmetic and
    the carried values stay fp32: the step is the fp32 step on the weights widened."""
    B, T, C = x.shape
    if (T != 1 or B > MAX_ROWS or model.config.version != 6 or torch.is_grad_enabled() or x.device.type != "cpu"
            or (lib := library()) is None or (found := layer_pointers(model)) is None or x.dtype != found[1]):
        return None
    pointers, dtype = found
    cfg = model.config
    if state is None:
        state = model.new_state(B)
    L, H, N = cfg.n_layer, cfg.n_head, cfg.head_size
    expected = ((L, B, C), (L, B, H, N, N), (L, B, C))
    if (state.att_shift.shape, state.wkv.shape, state.ffn_shift.shape) != expected:  # the kernel trusts these
        raise ValueError(f"state shapes {[tuple(t.shape) for t in (state.att_shift, state.wkv, state.ffn_shift)]} "
                         f"do not fit this model: expected {[list(s) for s in expected]}")
    first, att = model.blocks[0], model.blocks[0].att
    if (any(t.device.type != "cpu" for t in (state.att_shift, state.wkv, state.ffn_shift))
            or any(t.dtype != dtype or not t.is_contiguous() or t.shape != (C,) for t in (first.ln0.weight, first.ln0.bias))):
        return None
    old = [t.float().contiguous() for t in (state.att_shift, state.wkv, state.ffn_shift)]  # the kernel reads fp32
    new = [torch.empty_like(t) for t in old]
    hidden = x.reshape(B, C).to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # written in place
    lib.visualrwkv_rwkv6_step(
        WEIGHT_DTYPES[dtype], L, B, C, H, N, cfg.mix_rank, cfg.decay_rank, cfg.dim_ffn, pointers,
        first.ln0.weight.data_ptr(), first.ln0.bias.data_ptr(), first.ln1.eps, att.ln_x.eps, hidden.data_ptr(),
        *(t.data_ptr() for t in old), *(t.data_ptr() for t in new), torch.get_num_threads())
    att_shift, wkv, ffn_shift = new
    return hidden.view(B, 1, C), type(state)(att_shift.to(dtype), wkv, ffn_shift.to(dtype))
