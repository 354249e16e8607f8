"""Language-model speed, side by side with the `rwkv` package on the same weights.

Both run on the same random RWKV-6 (or, with `--version 7`, RWKV-7) weights written in the official
`.pth` layout, in one process,
alternating within each measurement, so the ratio is taken under the same machine load.
Reported: prefill tokens/s (median of repeats) at each prompt length, decode tokens/s at batch 1
(1 / median per-token latency over the timed steps) and, for ours, batched decode tokens/s. Decode
at batch 1 reads every weight once per token, so it is also compared with the memory-bandwidth
bound: bytes of weights read per token ÷ the machine's measured copy bandwidth.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..rwkv.checkpoint import load_rwkv
from ..testing import random_rwkv6_state_dict, random_rwkv7_state_dict
from ..utils import atomic_write


@dataclass
class LMBenchRow:
    impl: str
    n_embd: int
    n_layer: int
    prompt_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    weight_bytes_per_token: int | None = None  # weights a batch-1 decode step reads
    copy_bandwidth_bytes_per_s: float | None = None  # median of copies measured between the decode steps
    decode_bound_tok_s: float | None = None  # copy bandwidth / weight_bytes_per_token
    matrix_pass_tok_s: float | None = None  # 1 / (bare GEMVs over all the matrices): torch's own ceiling
    batch: int = 1
    batched_decode_tok_s: float | None = None  # tokens/s of all rows at `batch`
    version: int = 6  # RWKV-6 or RWKV-7


def copy_timer(nbytes: int = 512 << 20):
    """A function that times one in-memory copy of `nbytes` (seconds); the buffer is far larger than
    any cache, allocated and faulted in once."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def copy_once() -> float:
        t0 = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - t0

    return copy_once


def copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 7) -> float:
    """Bytes/s moved by a large in-memory copy, counting the read and the write (the STREAM
    convention), median of `repeats`."""
    copy_once = copy_timer(nbytes)
    return 2 * nbytes / statistics.median(copy_once() for _ in range(repeats))


def matrix_pass_seconds(model, repeats: int = 7) -> float:
    """Median seconds of one bare one-row product with every projection matrix of `model`, in order and
    through the model's own layers: what a decode step costs if it did nothing but read its matrices."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rows = {m.in_features: torch.ones(1, m.in_features, dtype=m.weight.dtype) for m in layers}

    def one_pass():
        with torch.no_grad():
            for m in layers:
                m(rows[m.in_features])

    one_pass()
    return _median_time(one_pass, repeats)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a one-token step reads: every block, ln_out, the head and one embedding row."""
    per_row = model.emb.weight[0].numel() * model.emb.weight.element_size()
    read = [model.blocks, model.ln_out, model.head]
    return per_row + sum(p.numel() * p.element_size() for m in read for p in m.parameters())


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_reference(path: Path, version: int = 6, log=print):
    """The `rwkv` package's model of `path`, or None. The package picks RWKV-7 or older generations
    when it is first imported (RWKV_V7_ON), so one process measures only one generation against it."""
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    if "rwkv.model" not in sys.modules:
        os.environ["RWKV_V7_ON"] = "1" if version == 7 else "0"
    try:
        import rwkv.model as package
    except ImportError:
        return None
    is_v7 = getattr(package, "RWKV_x070", None) is package.RWKV
    if is_v7 != (version == 7):
        log(f"  (the rwkv package was imported for {'RWKV-7' if is_v7 else 'RWKV-4..6'} in this process: "
            f"no reference for RWKV-{version}; measure it in a process of its own)")
        return None
    stem = str(path)[: -len(".pth")]
    return package.RWKV(model=stem, strategy="cpu fp32") if is_v7 else \
        package.RWKV(model=stem, strategy="cpu fp32", verbose=False)


def _greedy_step(step, state, tokens: list[int]):
    """One timed greedy step: (seconds, the new state, the next tokens), one row per token."""
    t0 = time.perf_counter()
    logits, state = step(tokens, state)
    seconds = time.perf_counter() - t0
    return seconds, state, logits.reshape(len(tokens), -1).argmax(-1).tolist()


@torch.no_grad()
def bench_config(n_embd: int, n_layer: int, prompt_lengths: list[int], decode_steps: int, repeats: int,
                 vocab_size: int = 65536, bandwidth_buffer: int = 512 << 20, batch: int = 8, bf16: bool = False,
                 compile: bool = False, version: int = 6, log=print) -> list[LMBenchRow]:
    """Every measurement alternates between the implementations (prefill repeat by repeat, decode
    step by step), so a slow spell of the machine hits all of them alike and the ratios hold.
    `compile` adds the PyTorch step under torch.compile; it compiles during the warm-up steps."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pth"
        random_weights = random_rwkv7_state_dict if version == 7 else random_rwkv6_state_dict
        torch.save(random_weights(n_embd, n_layer, vocab_size, seed=0), path)
        models = {"visualrwkv": load_rwkv(path).use_gemv_layout()}
        if bf16:
            models["visualrwkv-bf16"] = load_rwkv(path, dtype=torch.bfloat16).use_gemv_layout()
        if compile:  # the default layout, which the C++ step does not read: every step is torch.compile's
            models["visualrwkv-compile"] = load_rwkv(path).compile_step()
        reference = _load_reference(path, version, log)
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in prompt_lengths:
        prompt = torch.randint(1, min(vocab_size, 65530), (T,), generator=g)
        ids = prompt.tolist()
        impls = {name: (lambda m=m: m(prompt[None], logits="last"),
                        lambda toks, st, m=m: m(torch.tensor(toks)[:, None], st, logits="last"), m)
                 for name, m in models.items()}
        if reference is not None:  # the rwkv package decodes one sequence at a time: no batched rows
            impls["rwkv-0.8"] = (lambda: reference.forward(ids, None),
                                 lambda toks, st: reference.forward(toks, st), None)
        states = {name: prefill()[1] for name, (prefill, _, _) in impls.items()}  # warm-up (TorchScript compiles)
        prefill_s = {name: [] for name in impls}
        for _ in range(repeats):
            for name, (prefill, _, _) in impls.items():
                prefill_s[name].append(_median_time(prefill, repeats=1))
        # the bound's denominator is measured between the decode steps, so it sees the same machine
        copy_once, copy_s = copy_timer(bandwidth_buffer), []
        decode_s = {name: [] for name in impls}
        cursor = {name: (states[name], [1]) for name in impls}  # each side's own greedy continuation
        for _ in range(decode_steps + 2):  # the first 2 steps warm up
            copy_s.append(copy_once())
            for name, (_, step, _) in impls.items():
                seconds, state, tokens = _greedy_step(step, *cursor[name])
                cursor[name] = (state, tokens)
                decode_s[name].append(seconds)
        bandwidth = 2 * bandwidth_buffer / statistics.median(copy_s[2:])
        for name, (_, step, model) in impls.items():
            row = LMBenchRow(name, n_embd, n_layer, T, T / statistics.median(prefill_s[name]),
                             1.0 / statistics.median(decode_s[name][2:]), version=version)
            text = f"  {name:15s} v{version} C={n_embd:4d} L={n_layer:2d} T={T:5d}  prefill {row.prefill_tok_s:9.0f} tok/s" \
                   f"  decode {row.decode_tok_s:7.1f} tok/s"
            if model is not None:
                row.weight_bytes_per_token = weight_bytes_per_token(model)
                row.copy_bandwidth_bytes_per_s = bandwidth
                row.decode_bound_tok_s = bandwidth / row.weight_bytes_per_token
                row.matrix_pass_tok_s = 1.0 / matrix_pass_seconds(model)
                text += f" (bound {row.decode_bound_tok_s:.1f}, bare GEMVs {row.matrix_pass_tok_s:.1f})"
                if batch > 1:
                    row.batch = batch
                    state, tokens, seconds = states[name].select([0] * batch), [1] * batch, []
                    for _ in range(decode_steps + 2):
                        dt, state, tokens = _greedy_step(step, state, tokens)
                        seconds.append(dt)
                    row.batched_decode_tok_s = batch / statistics.median(seconds[2:])
                    text += f"  batch {batch}: {row.batched_decode_tok_s:7.1f} tok/s"
            log(text)
            rows.append(row)
    return rows


def markdown_table(rows: list[LMBenchRow]) -> str:
    lines = ["| model | impl | prompt | prefill tok/s | decode tok/s (batch 1) | bandwidth bound tok/s | "
             "bound / decode | bare GEMVs tok/s | batched decode tok/s | prefill ratio | decode ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = {(r.version, r.n_embd, r.n_layer, r.prompt_tokens): r for r in rows if r.impl.startswith("rwkv")}
    for r in rows:
        base = ref.get((r.version, r.n_embd, r.n_layer, r.prompt_tokens))
        ours = base is not None and r is not base
        bound = f"{r.decode_bound_tok_s:.1f}" if r.decode_bound_tok_s else ""
        gap = f"{r.decode_bound_tok_s / r.decode_tok_s:.2f}×" if r.decode_bound_tok_s else ""
        gemv = f"{r.matrix_pass_tok_s:.1f}" if r.matrix_pass_tok_s else ""
        batched = f"{r.batched_decode_tok_s:.1f} (batch {r.batch})" if r.batched_decode_tok_s else ""
        ratio_p = f"{r.prefill_tok_s / base.prefill_tok_s:.2f}×" if ours else ""
        ratio_d = f"{r.decode_tok_s / base.decode_tok_s:.2f}×" if ours else ""
        generation = " RWKV-7" if r.version == 7 else ""
        lines.append(f"| C{r.n_embd}/L{r.n_layer}{generation} | {r.impl} | {r.prompt_tokens} | {r.prefill_tok_s:.0f} | "
                     f"{r.decode_tok_s:.1f} | {bound} | {gap} | {gemv} | {batched} | {ratio_p} | {ratio_d} |")
    return "\n".join(lines)


def run(args) -> int:
    configs = []
    for c in args.configs:
        try:
            n_embd, n_layer = (int(x) for x in c.split("x"))
        except ValueError:
            raise SystemExit(f"--configs: expected WIDTHxLAYERS such as 768x12, got {c!r}") from None
        configs.append((n_embd, n_layer))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for n_embd, n_layer in configs:
        rows += bench_config(n_embd, n_layer, args.prompt, args.decode_steps, args.repeats, args.vocab,
                             bandwidth_buffer=args.bandwidth_buffer_mib << 20, batch=args.batch, bf16=args.bf16,
                             compile=args.compile, version=args.version)
    table = markdown_table(rows)
    print(table)
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__,
                       "loadavg": list(os.getloadavg()),
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--configs", nargs="+", default=["256x4", "768x12"], metavar="CxL",
                   help="model sizes as WIDTHxLAYERS (default: 256x4 768x12)")
    p.add_argument("--prompt", nargs="+", type=int, default=[1024, 4096], help="prefill lengths")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--batch", type=int, default=8, help="rows of the batched decode measurement (1: skip it)")
    p.add_argument("--bf16", action="store_true", help="also measure ours with bf16 weights")
    p.add_argument("--compile", action="store_true",
                   help="also measure the PyTorch decode step under torch.compile (compiles for ~1 min at 768x12)")
    p.add_argument("--version", type=int, choices=(6, 7), default=6, help="RWKV generation of the random weights")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--bandwidth-buffer-mib", type=int, default=512, help="size of the copy-bandwidth buffer")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=run)
