"""The PyTorch decoding step under `torch.compile`, opt-in (`RWKV.compile_step()`, `--compile`).

On CPU the compiled C++ step (ops/cpu_kernels.py) is faster and comes first; this serves the steps it
does not take: a GPU, where eager decoding launches ~2,500 small kernels per token, more than 16 rows,
float16. torch.compile needs a working backend (inductor: a C++ compiler on CPU, Triton on a GPU) and
compiles lazily, on the first step of each new shape; wherever compiling fails, one warning says why
and the eager step runs from then on.
"""

from __future__ import annotations

import warnings

import torch


class CompiledStep:
    """`step(x [B, 1, C], state) -> (hidden [B, 1, C], RWKVState)` by the compiled blocks of `model`;
    None for what it does not take (a prompt, autograd on) and once compiling has failed: the caller
    then runs the eager blocks."""

    def __init__(self, model, mode: str | None = None):
        self.compiled = torch.compile(model.run_blocks, mode=mode)
        self.failure: Exception | None = None

    def __call__(self, x, state):
        if self.failure is not None or x.shape[1] != 1 or torch.is_grad_enabled():
            return None
        try:
            return self.compiled(x, state)
        except Exception as error:  # noqa: BLE001 - backends fail in many ways; each means "run eager"
            self.failure = error
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            warnings.warn(f"torch.compile could not compile the decoding step ({type(error).__name__}: "
                          f"{first_line}); decoding uses the eager PyTorch step", RuntimeWarning, stacklevel=3)
            return None
