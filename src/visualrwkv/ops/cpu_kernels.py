"""Compiled CPU decoding: rwkv_cpu.cpp (its products in cpu_products.h), built on first use with the
machine's C++ compiler.

Why hand-written: a decoding step is bound by reading the weights once (~590 MB per token for the
0.1B-class model in fp32), and eager PyTorch loses a third of the step to ~2,500 small operator calls
and the rest to one-core BLAS products; `torch.compile` measured slower still (docs/benchmarks.md).
The kernel runs all layers of a step in one call (RWKV-6 or RWKV-7), each product streaming its weight
on every thread. Every parameter goes in with its own kind, so models of mixed precision
(rwkv/precision.py) run too: matrices fp32, bf16, int8 or int4 (ops/quant.py), vectors fp32 or bf16;
the arithmetic, the activations and the state stay fp32 whatever the weights.

The build is plain g++ (no torch headers, ~1 s) into a per-user cache, keyed by the source, the flags,
the compiler and the CPU, and written atomically; the library is loaded with ctypes (which releases
the GIL during the call). Whenever it cannot be used (no compiler, not Linux-like, a build error,
VISUALRWKV_CPU_KERNELS=0) everything falls back to the PyTorch path, with one warning saying why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import operator
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
import weakref
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("rwkv_cpu.cpp")
HEADER = Path(__file__).with_name("cpu_products.h")  # included by SOURCE: its products
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
ENV_SWITCH = "VISUALRWKV_CPU_KERNELS"  # "0" turns the compiled kernels off
MAX_ROWS = 16  # beyond this many rows a product is no longer bound by reading the weights
WEIGHT_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the dense weights the kernels read: their `Kind`
KINDS = {torch.float32: 0, torch.bfloat16: 1, 8: 2, 4: 3}  # cpu_products.h's `Kind`: float dtypes and quantized bits
MAX_HEAD_SIZE_7 = 256  # the RWKV-7 block keeps a head's vectors on the stack

# per layer, in the order of the `Param6` / `Param7` enums in rwkv_cpu.cpp (attribute paths under a Block)
RWKV6_PARAMETERS = (
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
    "att.time_maa_g", "att.time_maa_w1", "att.time_maa_w2",
    "att.time_decay", "att.time_decay_w1", "att.time_decay_w2", "att.time_faaaa",
    "att.receptance.weight", "att.key.weight", "att.value.weight", "att.gate.weight", "att.output.weight",
    "att.ln_x.weight", "att.ln_x.bias",
    "ffn.time_maa_k", "ffn.time_maa_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight",
)
RWKV7_PARAMETERS = (
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g",
    "att.w0", "att.w1", "att.w2", "att.a0", "att.a1", "att.a2", "att.v0", "att.v1", "att.v2",
    "att.g1", "att.g2", "att.k_k", "att.k_a", "att.r_k",
    "att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
    "att.ln_x.weight", "att.ln_x.bias",
    "ffn.x_k", "ffn.key.weight", "ffn.value.weight",
)
LAYER_PARAMETERS = {6: RWKV6_PARAMETERS, 7: RWKV7_PARAMETERS}
# the raw parameters the kernel reads as [in, out] matrices (the LoRAs); every other non-Linear one is a vector
LORA_MATRICES = {"att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2",
                 "att.w1", "att.w2", "att.a1", "att.a2", "att.v1", "att.v2", "att.g1", "att.g2"}
_p = ctypes.c_void_p


class TensorArg(ctypes.Structure):
    """cpu_products.h's `Tensor`: a parameter's memory, its fp16 scales (quantized matrices) and kind."""

    _fields_ = [("data", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("kind", ctypes.c_int64),
                ("group", ctypes.c_int64)]



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


def _compile(command: list[str]) -> bool:
    """Run the compiler to the end whatever the terminal does: a Ctrl-C stops the user's answer, never this
    one-time build (a compiler killed by the SIGINT would leave the kernels off for the rest of the process).
    It runs in its own session, and is started with SIGINT blocked, which it inherits: a Ctrl-C between its
    fork and its setsid reached it there (seen under load). A KeyboardInterrupt while waiting (the build on
    the main thread) waits for the compiler; returns whether one came, for the caller to raise it after."""
    mask = getattr(signal, "pthread_sigmask", None)
    old = mask(signal.SIG_BLOCK, {signal.SIGINT}) if mask else None
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    finally:
        if mask:
            mask(signal.SIG_SETMASK, old)
    interrupted = False
    while True:
        try:
            _, stderr = process.communicate(timeout=300)
            break
        except KeyboardInterrupt:
            interrupted = True
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    if process.returncode:
        raise RuntimeError(f"{command[0]} failed: {stderr.strip()[-2000:] or f'exit status {process.returncode}'}")
    return interrupted


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    texts = [SOURCE.read_text(), HEADER.read_text()]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, version, _cpu_fingerprint()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"rwkv_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    print(f"compiling the CPU kernel (once, into {target.parent})…", file=sys.stderr, flush=True)
    try:
        interrupted = _compile([compiler, *FLAGS, str(SOURCE), "-o", tmp])
        os.replace(tmp, target)  # atomic: a concurrent process sees the whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if interrupted:  # the user's Ctrl-C, kept for after the build
        raise KeyboardInterrupt
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
    lib.visualrwkv_matmul.argtypes = [_p, _i, ctypes.POINTER(TensorArg), _i, _i, _p, ctypes.c_int]
    lib.visualrwkv_matmul.restype = None
    lib.visualrwkv_dequantize.argtypes = [ctypes.POINTER(TensorArg), _i, _i, _i, _i, ctypes.c_int, _p, ctypes.c_int]
    lib.visualrwkv_dequantize.restype = None
    lib.visualrwkv_step.argtypes = ([ctypes.c_int] + [_i] * 5 + [ctypes.POINTER(_i), ctypes.POINTER(TensorArg),
                                    ctypes.POINTER(TensorArg), _f, _f] + [_p] * 7 + [ctypes.c_int])
    lib.visualrwkv_step.restype = ctypes.c_int
    lib.visualrwkv_params_per_layer.argtypes = [ctypes.c_int]
    for version, names in LAYER_PARAMETERS.items():
        if lib.visualrwkv_params_per_layer(version) != len(names):
            raise RuntimeError(f"rwkv_cpu.cpp and RWKV{version}_PARAMETERS disagree on the layer parameters")
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


def quantized_matmul(x: Tensor, layer) -> Tensor | None:
    """fp32 rows x [..., in] times a `QuantizedLinear` (its tiles and input-major scales, ops/quant.py) by
    the compiled product: the fp32 product over the dequantized weights, up to summation order. None
    where it does not apply (autograd, too many rows, another device)."""
    arg = _quantized_argument(layer)
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or arg is None
            or x.shape[-1] != layer.in_features or not 0 < x.numel() <= MAX_ROWS * layer.in_features
            or (lib := library()) is None):
        return None
    rows = x.reshape(-1, layer.in_features).contiguous()
    y = torch.empty(rows.shape[0], layer.out_features)
    lib.visualrwkv_matmul(rows.data_ptr(), rows.shape[0], ctypes.byref(arg), layer.in_features, layer.out_features,
                          y.data_ptr(), torch.get_num_threads())
    return y.view(*x.shape[:-1], layer.out_features)


def dequantize_rows(layer, a: int, b: int, dtype: torch.dtype) -> Tensor | None:
    """Output rows a..b of a `QuantizedLinear`'s weight as [b - a, in] fp32 or bf16 (input-major memory,
    as a GEMM takes it) by the compiled kernel: the values of `quant.dequantize`. None where it does not apply."""
    if dtype not in (torch.float32, torch.bfloat16) or not 0 <= a < b <= layer.out_features \
            or (arg := _quantized_argument(layer)) is None or (lib := library()) is None:
        return None
    y = torch.empty(layer.in_features, b - a, dtype=dtype)
    lib.visualrwkv_dequantize(ctypes.byref(arg), layer.in_features, layer.out_features, a, b,
                              int(dtype == torch.bfloat16), y.data_ptr(), torch.get_num_threads())
    return y.t()


def _quantized_argument(layer) -> TensorArg | None:
    """The kernel's view of a QuantizedLinear: its tiles and scales where they are as the kernel reads them."""
    from .quant import tile_bytes  # noqa: PLC0415 (quant imports this module)

    tiles, scales, bits, group = layer.weight, layer.weight_scales, layer.bits, layer.group_size
    if (tiles.device.type != "cpu" or tiles.dtype != torch.uint8 or tiles.dim() != 1 or not tiles.is_contiguous()
            or tiles.numel() != tile_bytes(layer.in_features, layer.out_features, bits, group)
            or scales.dtype != torch.float16 or not scales.t().is_contiguous()
            or scales.shape != (layer.out_features, layer.in_features // group) or bits not in KINDS):
        return None
    return TensorArg(tiles.data_ptr(), scales.data_ptr(), KINDS[bits], group)


_NULL = TensorArg(None, None, 0, 0)


def _argument(owner, attribute: str, kind: str, shape: torch.Size) -> TensorArg | None:
    """The kernel's view of one parameter, or None where the kernel cannot read it as it is."""
    t = owner._parameters.get(attribute)
    if t is None or t.device.type != "cpu":
        return None
    if kind == "linear":  # [out, in] values in [in, out] memory (the GEMV layout), or quantized tiles
        if hasattr(owner, "weight_scales"):  # a QuantizedLinear
            if (owner.out_features, owner.in_features) != tuple(shape):
                return None
            return _quantized_argument(owner)
        if t.dtype not in WEIGHT_DTYPES or t.shape != shape or not t.t().is_contiguous():
            return None
    elif t.dtype not in WEIGHT_DTYPES or t.shape != shape or not t.is_contiguous():
        return None
    return TensorArg(t.data_ptr(), None, KINDS[t.dtype], 0)


class _Pointers:
    """Per model: where the step's parameters live and how the kernel reads each. The modules holding
    them are looked up once per set of blocks (`get_submodule` costs ~10 us a name), then re-read by
    dict look-ups each step, so replaced modules (`set_precision`), new Parameters and new memory
    (`use_gemv_layout`, `.to()`, loading with assign=True) are all seen; the checks rerun only then."""

    def __init__(self, model, blocks: tuple):
        self.blocks = blocks
        cfg = model.config
        names = LAYER_PARAMETERS[cfg.version]
        # the shapes the kernel assumes, from the block definitions themselves (on the meta device: no memory)
        with torch.device("meta"):
            shapes = {i: dict(type(blocks[i])(cfg, i).named_parameters()) for i in {0, len(blocks) - 1}}
        # (module, child name, attribute, kind, expected shape): a linear layer is read as module._modules[child],
        # which `set_precision` may replace; other parameters sit on `module` itself (child None)
        self.slots = []
        for i, block in enumerate(blocks):
            layer_shapes = shapes[0 if i == 0 else len(blocks) - 1]
            for name in names:
                module_path, _, attribute = name.rpartition(".")
                owner = block.get_submodule(module_path)
                shape = layer_shapes[name].shape if name in layer_shapes else None  # None: not in this layer
                if isinstance(owner, torch.nn.Linear) or hasattr(owner, "weight_scales"):
                    parent_path, _, child = module_path.rpartition(".")
                    self.slots.append((block.get_submodule(parent_path), child, attribute, "linear", shape))
                else:
                    self.slots.append((owner, None, attribute, "matrix" if name in LORA_MATRICES else "vector", shape))
        self.tensors: list = []  # what the pointers were taken from: each slot's tensor and scales (or None)
        self.addresses: list = []
        self.found: ctypes.Array | None = None

    def get(self) -> ctypes.Array | None:
        # every step: the same tensor objects at the same addresses? (~336 slots at C768/L12: kept to plain
        # comprehensions and C-level comparisons, ~0.1 ms, where a general key comparison took ~0.25)
        owners = [module._modules[child] if child else module for module, child, _, _, _ in self.slots]
        tensors = [owner._parameters.get(attribute) for owner, (_, _, attribute, _, _) in zip(owners, self.slots)]
        tensors += [owner._buffers.get("weight_scales") if kind == "linear" else None
                    for owner, (_, _, _, kind, _) in zip(owners, self.slots)]
        addresses = [0 if t is None else t.data_ptr() for t in tensors]
        if addresses == self.addresses and all(map(operator.is_, tensors, self.tensors)):
            return self.found
        self.tensors, self.addresses, self.found = tensors, addresses, None
        args = []
        for owner, (_, _, attribute, kind, shape) in zip(owners, self.slots):
            arg = _NULL if shape is None else _argument(owner, attribute, kind, shape)
            if arg is None:
                return None
            args.append(arg)
        self.found = (TensorArg * len(args))(*args)
        return self.found


_pointers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def forget_layers(model) -> None:
    """Drop what is known of `model`'s layers, after they were replaced (adding or merging a LoRA adapter)."""
    _pointers.pop(model, None)


def layer_pointers(model) -> ctypes.Array | None:
    """The kernel's view of every parameter the step reads (`TensorArg`s, layer by layer), or None if
    one is not CPU memory of a kind and layout the step takes: linear layers fp32 or bf16 in the GEMV
    layout (`RWKV.use_gemv_layout`) or quantized (their tiles, ops/quant.py), every other parameter fp32 or bf16 and
    contiguous. Kinds may differ from tensor to tensor."""
    blocks = tuple(model.blocks)
    cached = _pointers.get(model)
    if cached is None or len(cached.blocks) != len(blocks) or any(a is not b for a, b in zip(cached.blocks, blocks)):
        cached = _pointers[model] = _Pointers(model, blocks)
    return cached.get()


def _vector(t: Tensor, C: int) -> TensorArg | None:
    if t.device.type != "cpu" or t.dtype not in WEIGHT_DTYPES or not t.is_contiguous() or t.shape != (C,):
        return None
    return TensorArg(t.data_ptr(), None, KINDS[t.dtype], 0)


def decode_step(model, x: Tensor, state):
    """One token [B, 1, C] through every layer of `model` (an RWKV-6 or RWKV-7 `RWKV`) by the compiled step.

    Returns (hidden [B, 1, C] fp32, before ln_out; the new RWKVState, shifts in x's dtype), or None
    where the step does not apply (autograd on, a parameter the kernel does not read as it is stored,
    x not in the model's dtype or not fp32/bf16, more than MAX_ROWS rows, an RWKV-7 head size above
    MAX_HEAD_SIZE_7). Whatever the weights, the arithmetic and the carried values stay fp32: the step
    is the fp32 step on the weights widened (bf16) or dequantized (int8, int4)."""
    B, T, C = x.shape
    cfg = model.config
    if (T != 1 or B > MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype not in WEIGHT_DTYPES
            or x.dtype != model.dtype or (cfg.version == 7 and cfg.head_size > MAX_HEAD_SIZE_7)
            or (lib := library()) is None or (pointers := layer_pointers(model)) is None):
        return None
    first = model.blocks[0]
    ln0 = [_vector(first.ln0.weight, C), _vector(first.ln0.bias, C)]
    if None in ln0:
        return None
    if state is None:
        state = model.new_state(B)
    L, H, N = cfg.n_layer, cfg.n_head, cfg.head_size
    expected = ((L, B, C), (L, B, H, N, N), (L, B, C))
    if (state.att_shift.shape, state.wkv.shape, state.ffn_shift.shape) != expected:  # the kernel trusts these
        raise ValueError(f"state shapes {[tuple(t.shape) for t in (state.att_shift, state.wkv, state.ffn_shift)]} "
                         f"do not fit this model: expected {[list(s) for s in expected]}")
    if any(t.device.type != "cpu" for t in (state.att_shift, state.wkv, state.ffn_shift)):
        return None
    if cfg.version == 7:
        sizes = (cfg.decay_rank, cfg.a_rank, cfg.value_rank, cfg.gate_rank, cfg.dim_ffn)
    else:
        sizes = (cfg.mix_rank, cfg.decay_rank, cfg.dim_ffn)
    old = [t.float().contiguous() for t in (state.att_shift, state.wkv, state.ffn_shift)]  # the kernel reads fp32
    new = [torch.empty_like(t) for t in old]
    hidden = x.reshape(B, C).to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # written in place
    done = lib.visualrwkv_step(
        cfg.version, L, B, C, H, N, (ctypes.c_int64 * len(sizes))(*sizes), pointers, (TensorArg * 2)(*ln0),
        first.ln1.eps, first.att.ln_x.eps, hidden.data_ptr(), *(t.data_ptr() for t in old),
        *(t.data_ptr() for t in new), torch.get_num_threads())
    if done != 0:
        return None
    att_shift, wkv, ffn_shift = new
    return hidden.view(B, 1, C), type(state)(att_shift.to(x.dtype), wkv, ffn_shift.to(x.dtype))
