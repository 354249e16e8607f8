"""Tiny random models and checkpoints for tests and benchmarks (nothing is downloaded)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .rwkv.model import RWKV, RWKVConfig


LAYER_NORM_WEIGHTS = ("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")


def _random_shared(name: str, shape, g: torch.Generator) -> torch.Tensor:
    """What both generations share: norms near 1, small biases, unit embeddings, 1/√in linear weights."""
    if name.endswith(LAYER_NORM_WEIGHTS):
        return 1 + 0.2 * torch.randn(shape, generator=g)
    if name.endswith(".bias"):
        return 0.1 * torch.randn(shape, generator=g)
    if name == "emb.weight":
        return torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / shape[-1] ** 0.5  # linear weights [out, in]


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
        if "time_maa" in name and ("w1" in name or "w2" in name):
            t = 0.1 * torch.randn(shape, generator=g)
        elif "time_maa" in name:
            t = torch.rand(shape, generator=g)
        elif name.endswith("time_decay"):
            t = -6 + 8.5 * torch.rand(shape, generator=g)
        elif "time_decay_w" in name:
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("time_faaaa"):
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = _random_shared(name, shape, g)
        sd[name] = t.to(dtype).contiguous()
    return sd


def random_rwkv7_state_dict(n_embd: int = 128, n_layer: int = 2, vocab_size: int = 65536, head_size: int = 64,
                            seed: int = 0, dtype: torch.dtype = torch.float32, layer0_value_residual: bool = False,
                            **ranks: int) -> dict[str, torch.Tensor]:
    """Random RWKV-7 weights in the official `.pth` layout (SPEC §4.4), scaled like trained weights.

    `ranks` sets LoRA ranks (decay_rank, a_rank, value_rank, gate_rank; default: the trainer's formula),
    e.g. the 0B4 file's 64/64/32/128 at C = 1024. `layer0_value_residual` adds the unused layer-0
    `att.v0/v1/v2` that some published files carry. Decays span their whole range (z from −6 to +6),
    and the in-context rates `a` spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    cfg = RWKVConfig(n_embd=n_embd, n_layer=n_layer, vocab_size=vocab_size, head_size=head_size, version=7, **ranks)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in RWKV(cfg).state_dict().items()}
    if layer0_value_residual and n_layer > 1:
        shapes |= {f"blocks.0.att.{n}": shapes[f"blocks.1.att.{n}"] for n in ("v0", "v1", "v2")}
    sd = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("x_"):
            t = torch.rand(shape, generator=g)
        elif leaf == "w0":
            t = -6 + 12 * torch.rand(shape, generator=g)
        elif leaf in ("a0", "v0"):
            t = 2 * torch.randn(shape, generator=g)
        elif leaf in ("w1", "a1", "v1", "g1", "w2", "a2", "v2", "g2"):
            t = 0.3 * torch.randn(shape, generator=g) / shape[0] ** 0.5
        elif leaf in ("k_k", "k_a"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif leaf == "r_k":
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = _random_shared(name, shape, g)
        sd[name] = t.to(dtype).contiguous()
    return sd


def random_rwkv7(n_embd: int = 128, n_layer: int = 2, vocab_size: int = 65536, seed: int = 0, **ranks: int) -> RWKV:
    sd = random_rwkv7_state_dict(n_embd, n_layer, vocab_size, seed=seed, **ranks)
    model = RWKV(RWKVConfig(n_embd=n_embd, n_layer=n_layer, vocab_size=vocab_size, version=7, **ranks))
    model.load_state_dict(sd)
    return model.eval()


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


def fp32_rounding_excess(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> float:
    """How far fp32 rows y [M, out] of x [M, K] @ weight.t() ([out, K]) stray past fp32's rounding of a
    length-K sum (2 sqrt(K) units of the unit roundoff times sum |x||w|, judged against float64): <= 1
    where y is the fp32 product up to summation order, whatever that order is."""
    exact = x.double() @ weight.double().t()
    scale = x.double().abs() @ weight.double().abs().t()
    bound = 2 * x.shape[-1] ** 0.5 * torch.finfo(torch.float32).eps * scale
    return ((y.double() - exact).abs() / bound.clamp(min=torch.finfo(torch.float64).tiny)).max().item()
