"""Language-model speed and accuracy, side by side with the `rwkv` package and llama.cpp on the same weights.

All run on the same random RWKV-6 (or, with `--version 7`, RWKV-7) weights written in the official `.pth`
layout, in one process,
alternating within each measurement, so the ratio is taken under the same machine load.
Reported: prefill tokens/s (median of repeats) at each prompt length, decode tokens/s at batch 1
(1 / median per-token latency over the timed steps) and, for ours, batched decode tokens/s. Decode
at batch 1 reads every weight once per token, so it is also compared with the memory-bandwidth
bound: bytes of weights read per token ÷ the machine's measured copy bandwidth.

Ours runs in each asked precision (rwkv/precision.py); llama.cpp (bench/llama_peer.py, when
`llama_cpp` imports) in its counterpart: F32, F16, BF16, Q8_0, Q4_0. Before any timing, every
implementation's logits are compared with ours in fp32 on one prompt and the steps after it, fed the
same tokens (max and mean |Δlogit|, and how often the greedy token agrees); llama.cpp's F32 must
equal ours (≤ 1e-3), or its rows are dropped with a note.
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

from ..ops.quant import QuantizedEmbedding, QuantizedLinear
from ..rwkv.checkpoint import load_rwkv
from ..rwkv.precision import PRECISIONS
from ..testing import random_rwkv6_state_dict, random_rwkv7_state_dict
from ..utils import atomic_write
from . import llama_peer

# our implementations by precision, and llama.cpp's counterpart of each
IMPL_NAMES = {"float32": "visualrwkv", "bfloat16": "visualrwkv-bf16", "float16": "visualrwkv-fp16",
              "int8": "visualrwkv-int8", "int4": "visualrwkv-int4"}
SAME_MODEL_TOLERANCE = 1e-3  # llama.cpp F32 against our fp32, max |Δlogit|


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
    peer: str | None = None  # the llama.cpp row this one is compared with (ours) or None
    version: int = 6  # RWKV-6 or RWKV-7


@dataclass
class AccuracyRow:
    """One implementation's logits against ours in fp32, same weights, same tokens (teacher-forced)."""

    impl: str
    n_embd: int
    n_layer: int
    prompt_tokens: int
    steps: int
    max_abs_diff: float  # over every prompt position and every step
    mean_abs_diff: float
    prompt_max_abs_diff: float
    steps_max_abs_diff: float
    greedy_agreement: float  # fraction of the steps whose greedy token is fp32's
    logit_std: float  # of the fp32 logits, for scale


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
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))]
    rows = {m.in_features: torch.ones(1, m.in_features, dtype=model.dtype) for m in layers}

    def one_pass():
        with torch.no_grad():
            for m in layers:
                m(rows[m.in_features])

    one_pass()
    return _median_time(one_pass, repeats)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a one-token step reads: every block, ln_out, the head and one embedding row
    (quantized matrices: codes and scales)."""
    emb = model.emb
    per_row = _nbytes([emb.weight[0]] + ([emb.weight_scales[0]] if isinstance(emb, QuantizedEmbedding) else []))
    read = [model.blocks, model.ln_out, model.head]
    return per_row + sum(_nbytes([*m.parameters(), *m.buffers()]) for m in read)


def gguf_bytes_per_token(path) -> int:
    """The same for a GGUF: every tensor but the embedding, and one embedding row."""
    import gguf

    total = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        total += int(t.n_bytes) // int(t.shape[-1]) if t.name == "token_embd.weight" else int(t.n_bytes)
    return total


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


def _rotated(impls: dict, round_: int) -> list:
    """The implementations in the order of round `round_`: each starts a round as often as the others, so the
    one right after the copy (whose written lines the next reads must evict first) is not always the same."""
    names = list(impls)
    k = round_ % len(names)
    return names[k:] + names[:k]


def _greedy_step(step, state, tokens: list[int]):
    """One timed greedy step: (seconds, the new state, the next tokens), one row per token."""
    t0 = time.perf_counter()
    logits, state = step(tokens, state)
    seconds = time.perf_counter() - t0
    return seconds, state, logits.reshape(len(tokens), -1).argmax(-1).tolist()


def _ours_logits(model, ids: list[int], follow: list[int]) -> torch.Tensor:
    """Logits [len(ids) + len(follow), V]: every prompt position, then one step per token of `follow`."""
    logits, state = model(torch.tensor([ids]), logits="all")
    rows = [logits[0].float()]
    for token in follow:
        step, state = model(torch.tensor([[token]]), state, logits="last")
        rows.append(step.float())
    return torch.cat(rows)


def _peer_logits(peer, ids: list[int], follow: list[int]) -> torch.Tensor:
    return torch.cat([peer.prefill(ids, all_logits=True), torch.stack([peer.step(t) for t in follow])])


@torch.no_grad()
def accuracy(models: dict, peers: dict, n_embd: int, n_layer: int, vocab_size: int, prompt_tokens: int = 16,
             steps: int = 64) -> list[AccuracyRow]:
    """Every implementation against ours in fp32 ("visualrwkv"): one random prompt, then `steps` greedy
    tokens of fp32's own continuation fed to all (teacher-forced), so the differences do not compound."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, min(vocab_size, 65530), (prompt_tokens,), generator=g).tolist()
    reference_model = models["visualrwkv"]
    logits, state = reference_model(torch.tensor([ids]), logits="all")
    follow, rows, token = [], [logits[0]], int(logits[0, -1].argmax())
    for _ in range(steps):  # fp32's greedy continuation
        follow.append(token)
        step, state = reference_model(torch.tensor([[token]]), state, logits="last")
        rows.append(step.float())
        token = int(step[0].argmax())
    reference = torch.cat(rows)
    out = []
    for name, logits in [(n, _ours_logits(m, ids, follow)) for n, m in models.items()] + \
                        [(n, _peer_logits(p, ids, follow)) for n, p in peers.items()]:
        diff = (logits - reference).abs()
        agree = (logits[prompt_tokens - 1:-1].argmax(-1) == reference[prompt_tokens - 1:-1].argmax(-1)).float()
        out.append(AccuracyRow(name, n_embd, n_layer, prompt_tokens, steps, diff.max().item(), diff.mean().item(),
                               diff[:prompt_tokens].max().item(), diff[prompt_tokens:].max().item(),
                               agree.mean().item(), reference.std().item()))
    return out


@torch.no_grad()
def bench_config(n_embd: int, n_layer: int, prompt_lengths: list[int], decode_steps: int, repeats: int,
                 vocab_size: int = 65536, bandwidth_buffer: int = 512 << 20, batch: int = 8, bf16: bool = False,
                 compile: bool = False, dtypes: tuple[str, ...] = ("float32",), llama_cpp: bool = True,
                 accuracy_steps: int = 64, log=print, notes: list | None = None,
                 accuracy_rows: list | None = None, version: int = 6) -> list[LMBenchRow]:
    """Every measurement alternates between the implementations (prefill repeat by repeat, decode
    step by step, the order rotating each round), so a slow spell of the machine hits all of them alike
    and the ratios hold.
    `dtypes`: our precisions (fp32 always); `bf16` adds bfloat16. `llama_cpp`: llama.cpp's counterparts,
    where it imports. `compile` adds the PyTorch step under torch.compile; it compiles during the
    warm-up steps. Accuracy rows go to `accuracy_rows`, notes (what was skipped and why) to `notes`."""
    notes = notes if notes is not None else []
    dtypes = ["float32"] + [d for d in dict.fromkeys((*dtypes, *(("bfloat16",) if bf16 else ()))) if d != "float32"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pth"
        random_weights = random_rwkv7_state_dict if version == 7 else random_rwkv6_state_dict
        torch.save(random_weights(n_embd, n_layer, vocab_size, seed=0), path)
        models = {IMPL_NAMES[d]: load_rwkv(path, dtype=d).use_gemv_layout() for d in dtypes}
        if compile:  # the default layout, which the C++ step does not read: every step is torch.compile's
            models["visualrwkv-compile"] = load_rwkv(path).compile_step()
        reference = _load_reference(path, version, log)
        peers, peer_bytes = {}, {}
        if llama_cpp and version == 7:
            notes.append("llama.cpp skipped for RWKV-7: its GGUF writer here (bench/llama_peer.py) covers RWKV-6")
        elif llama_cpp:
            llama, why = llama_peer.import_llama()
            if llama is None:
                notes.append(f"llama.cpp skipped: llama_cpp does not import ({why})")
            else:
                kinds = [llama_peer.LLAMA_TYPES[d] for d in dtypes]
                longest = max([*prompt_lengths, 16])
                built = llama_peer.build_peers(models["visualrwkv"], kinds, tmp, n_ctx=longest + 2 * decode_steps
                                               + accuracy_steps + 64, n_batch=longest)
                peers = {f"llama.cpp-{k}": p for k, p in built.items()}
                if llama_peer.cpu_has_amx():
                    notes.append(llama_peer.AMX_NOTE)
                peer_bytes = {f"llama.cpp-{k}": gguf_bytes_per_token(Path(tmp) / f"model-{k}.gguf") for k in built}
    checks = accuracy(models, peers, n_embd, n_layer, vocab_size, steps=accuracy_steps)
    for row in checks:
        log(f"  accuracy {row.impl:20s} max |dlogit| {row.max_abs_diff:.3g} mean {row.mean_abs_diff:.3g} "
            f"greedy agreement {row.greedy_agreement:.3f} (logit std {row.logit_std:.2f})")
    if "llama.cpp-F32" in peers:
        same = next(r for r in checks if r.impl == "llama.cpp-F32").max_abs_diff
        if same > SAME_MODEL_TOLERANCE:
            notes.append(f"llama.cpp dropped at C{n_embd}/L{n_layer}: its F32 logits differ from ours by {same:.3g} "
                         f"(> {SAME_MODEL_TOLERANCE}): not the same model")
            peers, checks = {}, [r for r in checks if not r.impl.startswith("llama.cpp")]
    if accuracy_rows is not None:
        accuracy_rows += checks
    counterpart = {IMPL_NAMES[d]: f"llama.cpp-{llama_peer.LLAMA_TYPES[d]}" for d in dtypes}
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
        for name, peer in peers.items():  # llama.cpp keeps its state in its context; one sequence
            impls[name] = (lambda p=peer: (p.prefill(ids), None), lambda toks, st, p=peer: (p.step(toks[0]), None), None)
        states = {name: prefill()[1] for name, (prefill, _, _) in impls.items()}  # warm-up (TorchScript compiles)
        prefill_s = {name: [] for name in impls}
        for r in range(repeats):
            for name in _rotated(impls, r):
                prefill_s[name].append(_median_time(impls[name][0], repeats=1))
        # the bound's denominator is measured between the decode steps, so it sees the same machine
        copy_once, copy_s = copy_timer(bandwidth_buffer), []
        decode_s = {name: [] for name in impls}
        cursor = {name: (states[name], [1]) for name in impls}  # each side's own greedy continuation
        for r in range(decode_steps + 2):  # the first 2 steps warm up
            copy_s.append(copy_once())
            for name in _rotated(impls, r):
                seconds, state, tokens = _greedy_step(impls[name][1], *cursor[name])
                cursor[name] = (state, tokens)
                decode_s[name].append(seconds)
        bandwidth = 2 * bandwidth_buffer / statistics.median(copy_s[2:])
        for name, (_, step, model) in impls.items():
            row = LMBenchRow(name, n_embd, n_layer, T, T / statistics.median(prefill_s[name]),
                             1.0 / statistics.median(decode_s[name][2:]), version=version)
            row.peer = counterpart.get(name) if counterpart.get(name) in peers else None
            text = f"  {name:18s} v{version} C={n_embd:4d} L={n_layer:2d} T={T:5d}  prefill {row.prefill_tok_s:9.0f} tok/s" \
                   f"  decode {row.decode_tok_s:7.1f} tok/s"
            if name in peer_bytes:
                row.weight_bytes_per_token = peer_bytes[name]
                row.copy_bandwidth_bytes_per_s = bandwidth
                row.decode_bound_tok_s = bandwidth / row.weight_bytes_per_token
                text += f" (bound {row.decode_bound_tok_s:.1f})"
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
    """Speed; ratios: ours against the `rwkv` package (prefill, decode) and against llama.cpp's counterpart."""
    lines = ["| model | impl | prompt | prefill tok/s | decode tok/s (batch 1) | bandwidth bound tok/s | "
             "bound / decode | bare GEMVs tok/s | batched decode tok/s | prefill ratio | decode ratio | "
             "vs llama.cpp prefill | vs llama.cpp decode |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = {(r.version, r.n_embd, r.n_layer, r.prompt_tokens): r for r in rows if r.impl.startswith("rwkv")}
    by_name = {(r.impl, r.n_embd, r.n_layer, r.prompt_tokens): r for r in rows}
    for r in rows:
        base = ref.get((r.version, r.n_embd, r.n_layer, r.prompt_tokens))
        ours = base is not None and r.impl.startswith("visualrwkv")
        peer = by_name.get((r.peer, r.n_embd, r.n_layer, r.prompt_tokens)) if r.peer else None
        bound = f"{r.decode_bound_tok_s:.1f}" if r.decode_bound_tok_s else ""
        gap = f"{r.decode_bound_tok_s / r.decode_tok_s:.2f}×" if r.decode_bound_tok_s else ""
        gemv = f"{r.matrix_pass_tok_s:.1f}" if r.matrix_pass_tok_s else ""
        batched = f"{r.batched_decode_tok_s:.1f} (batch {r.batch})" if r.batched_decode_tok_s else ""
        ratio_p = f"{r.prefill_tok_s / base.prefill_tok_s:.2f}×" if ours else ""
        ratio_d = f"{r.decode_tok_s / base.decode_tok_s:.2f}×" if ours else ""
        peer_p = f"{r.prefill_tok_s / peer.prefill_tok_s:.2f}× ({peer.impl[10:]})" if peer else ""
        peer_d = f"{r.decode_tok_s / peer.decode_tok_s:.2f}×" if peer else ""
        generation = " RWKV-7" if r.version == 7 else ""
        lines.append(f"| C{r.n_embd}/L{r.n_layer}{generation} | {r.impl} | {r.prompt_tokens} | {r.prefill_tok_s:.0f} | "
                     f"{r.decode_tok_s:.1f} | {bound} | {gap} | {gemv} | {batched} | {ratio_p} | {ratio_d} | "
                     f"{peer_p} | {peer_d} |")
    return "\n".join(lines)


def accuracy_table(rows: list[AccuracyRow]) -> str:
    lines = ["| model | impl | max \\|Δlogit\\| | mean \\|Δlogit\\| | prompt max | steps max | greedy agreement |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| C{r.n_embd}/L{r.n_layer} | {r.impl} | {r.max_abs_diff:.3g} | {r.mean_abs_diff:.3g} | "
                     f"{r.prompt_max_abs_diff:.3g} | {r.steps_max_abs_diff:.3g} | "
                     f"{round(r.greedy_agreement * r.steps)}/{r.steps} |")
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
    rows, checks, notes = [], [], []
    for n_embd, n_layer in configs:
        rows += bench_config(n_embd, n_layer, args.prompt, args.decode_steps, args.repeats, args.vocab,
                             bandwidth_buffer=args.bandwidth_buffer_mib << 20, batch=args.batch, bf16=args.bf16,
                             compile=args.compile, dtypes=tuple(args.dtypes), llama_cpp=not args.no_llama_cpp,
                             accuracy_steps=args.accuracy_steps, notes=notes, accuracy_rows=checks,
                             version=args.version)
    if rows:
        print(markdown_table(rows))
        print()
        print(accuracy_table(checks))
    quality = []
    if args.heldout:
        from ..engine.defaults import load_model
        from .quality import heldout_quality, quality_table

        quality = heldout_quality(load_model(args.heldout_model, dtype="float32"), args.heldout,
                                  [d for d in args.dtypes if d != "float32"], args.heldout_limit or None)
        print()
        print(quality_table(quality))
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__,
                       "loadavg": list(os.getloadavg()), "notes": list(dict.fromkeys(notes)),
                       "rows": [asdict(r) for r in rows], "accuracy": [asdict(r) for r in checks],
                       "heldout": [asdict(r) for r in quality]}, f, indent=2)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--configs", nargs="*", default=["256x4", "768x12"], metavar="CxL",
                   help="model sizes as WIDTHxLAYERS (default: 256x4 768x12; none: no speed runs)")
    p.add_argument("--prompt", nargs="+", type=int, default=[1024, 4096], help="prefill lengths")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--batch", type=int, default=8, help="rows of the batched decode measurement (1: skip it)")
    p.add_argument("--dtypes", nargs="+", choices=PRECISIONS, default=["float32"],
                   help="our precisions (float32 always; llama.cpp runs F32/F16/BF16/Q8_0/Q4_0 beside them)")
    p.add_argument("--bf16", action="store_true", help="also measure ours with bf16 weights (= --dtypes ... bfloat16)")
    p.add_argument("--no-llama-cpp", action="store_true",
                   help="leave llama.cpp out (by default it runs beside ours when llama_cpp imports)")
    p.add_argument("--accuracy-steps", type=int, default=64, help="steps of the accuracy check after its 16-token prompt")
    p.add_argument("--compile", action="store_true",
                   help="also measure the PyTorch decode step under torch.compile (compiles for ~1 min at 768x12)")
    p.add_argument("--version", type=int, choices=(6, 7), default=6, help="RWKV generation of the random weights")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--bandwidth-buffer-mib", type=int, default=512, help="size of the copy-bandwidth buffer")
    p.add_argument("--heldout", metavar="JSON",
                   help="also score each precision against fp32 on these held-out QA rows (e.g. `visualrwkv data "
                        "shapes`' test.json): perplexity, its change, |Δlogit| and greedy agreement (bench/quality.py)")
    p.add_argument("--heldout-model", help="the model --heldout scores (default: the shipped tiny model)")
    p.add_argument("--heldout-limit", type=int, default=300, help="rows of --heldout to score (0: all)")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=run)
