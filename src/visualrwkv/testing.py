"""Tiny random models and checkpoints for tests and benchmarks (nothing is downloaded)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .rwkv.model import RWKV, RWKVConfig


def random_rwkv6_state_dict(n_embd: int = 128, n_layer: int = 2, vocab_size: int = 65536, head_size: int = 64,
                            seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random RWKV-6 weights in the official `.pth` layout, scaled like trained weights.

    Decays mix weak and strong channels (w_raw from about -6 to +2.5) so that tests exercise
    the numerically hard cases; LoRA weights are non-zero so the data-dependent paths matter.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = RWKVConfig(n_embd=n_embd, n_layer=n_layer, vocab_size=vocab_size, head_size=head_size)
    model = RWKV(cfg)
    sd = {}
    for name, p in model.state_dict().items():
        shape = p.shape
        if name.endswith("ln0.weight") or name.endswith("ln1.weight") or name.endswith("ln2.weight") \
                or name.endswith("ln_out.weight") or name.endswith("ln_x.weight"):
            t = 1 + 0.2 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif "time_maa" in name and ("w1" in name or "w2" in name):
            t = 0.1 * torch.randn(shape, generator=g)
        elif "time_maa" in name:
            t = torch.rand(shape, generator=g)
        elif name.endswith("time_decay"):
            t = -6 + 8.5 * torch.rand(shape, generator=g)
        elif "time_decay_w" in name:
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("time_faaaa"):
            t = 0.5 * torch.randn(shape, generator=g)
        elif name == "emb.weight":
            t = torch.randn(shape, generator=g)
        else:  # linear weights [out, in]
            t = torch.randn(shape, generator=g) / shape[-1] ** 0.5
        sd[name] = t.to(dtype).contiguous()
    return sd


def random_rwkv6(n_embd: int = 128, n_layer: int = 2, vocab_size: int = 65536, seed: int = 0) -> RWKV:
    sd = random_rwkv6_state_dict(n_embd, n_layer, vocab_size, seed=seed)
    model = RWKV(RWKVConfig(n_embd=n_embd, n_layer=n_layer, vocab_size=vocab_size))
    model.load_state_dict(sd)
    return model.eval()


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
