"""Language-model speed, side by side with the `rwkv` package on the same weights.

Both run on the same random RWKV-6 weights written in the official `.pth` layout, in one process,
one after the other for each measurement, so the ratio is taken under the same machine load.
Reported: prefill tokens/s (median of repeats) at each prompt length, and decode tokens/s at batch 1
(1 / median per-token latency over the timed steps).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..rwkv.checkpoint import load_rwkv
from ..testing import random_rwkv6_state_dict
from ..utils import atomic_write


@dataclass
class LMBenchRow:
    impl: str
    n_embd: int
    n_layer: int
    prompt_tokens: int
    prefill_tok_s: float
    decode_tok_s: float


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_reference(path: Path):
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    try:
        from rwkv.model import RWKV as ReferenceRWKV
    except ImportError:
        return None
    return ReferenceRWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32", verbose=False)


@torch.no_grad()
def bench_config(n_embd: int, n_layer: int, prompt_lengths: list[int], decode_steps: int, repeats: int,
                 vocab_size: int = 65536, log=print) -> list[LMBenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pth"
        torch.save(random_rwkv6_state_dict(n_embd, n_layer, vocab_size, seed=0), path)
        ours = load_rwkv(path)
        reference = _load_reference(path)
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in prompt_lengths:
        prompt = torch.randint(1, min(vocab_size, 65530), (T,), generator=g)
        ids = prompt.tolist()
        impls = {"visualrwkv": (lambda: ours(prompt[None], logits="last"),
                                lambda tok, st: ours(torch.tensor([[tok]]), st, logits="last"))}
        if reference is not None:
            impls["rwkv-0.8"] = (lambda: reference.forward(ids, None),
                                 lambda tok, st: reference.forward([tok], st))
        for name, (prefill, step) in impls.items():
            prefill()  # warm-up (TorchScript compiles on the first call)
            t_prefill = _median_time(prefill, repeats)
            _, state = prefill()
            latencies = []
            tok = 1
            for i in range(decode_steps + 2):
                t0 = time.perf_counter()
                logits, state = step(tok, state)
                latencies.append(time.perf_counter() - t0)
                tok = int(logits.reshape(-1).argmax())
            decode = 1.0 / statistics.median(latencies[2:])  # the first steps warm up
            row = LMBenchRow(name, n_embd, n_layer, T, T / t_prefill, decode)
            log(f"  {name:10s} C={n_embd:4d} L={n_layer:2d} T={T:5d}  prefill {row.prefill_tok_s:9.0f} tok/s"
                f"  decode {row.decode_tok_s:7.1f} tok/s")
            rows.append(row)
    return rows


def markdown_table(rows: list[LMBenchRow]) -> str:
    lines = ["| model | impl | prompt | prefill tok/s | decode tok/s (batch 1) | prefill ratio | decode ratio |",
             "|---|---|---|---|---|---|---|"]
    ref = {(r.n_embd, r.n_layer, r.prompt_tokens): r for r in rows if r.impl != "visualrwkv"}
    for r in rows:
        base = ref.get((r.n_embd, r.n_layer, r.prompt_tokens))
        ratio_p = f"{r.prefill_tok_s / base.prefill_tok_s:.2f}×" if base and r.impl == "visualrwkv" else ""
        ratio_d = f"{r.decode_tok_s / base.decode_tok_s:.2f}×" if base and r.impl == "visualrwkv" else ""
        lines.append(f"| C{r.n_embd}/L{r.n_layer} | {r.impl} | {r.prompt_tokens} | {r.prefill_tok_s:.0f} | "
                     f"{r.decode_tok_s:.1f} | {ratio_p} | {ratio_d} |")
    return "\n".join(lines)


def run(args) -> int:
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for n_embd, n_layer in configs:
        rows += bench_config(n_embd, n_layer, args.prompt, args.decode_steps, args.repeats, args.vocab)
    table = markdown_table(rows)
    print(table)
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--configs", nargs="+", default=["256x4", "768x12"], metavar="CxL",
                   help="model sizes as WIDTHxLAYERS (default: 256x4 768x12)")
    p.add_argument("--prompt", nargs="+", type=int, default=[1024, 4096], help="prefill lengths")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=run)
