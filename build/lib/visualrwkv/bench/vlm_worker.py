"""One measurement of `visualrwkv bench vlm`, in a process of its own so that its peak memory is clean.

    python -m visualrwkv.bench.vlm_worker JOBS.json RESULTS.json

JOBS.json is a list of jobs for one side: normally a single one (`--quick` runs all of a side's jobs
in one process, which keeps the smoke test fast but its memory figures less clean). A job is either
"context" (prefill one image + text filling `length` positions, then time `decode_steps` greedy
decode steps over it) or "cobra" (SPEC §9.4: one image, a fixed prompt, exactly `new_tokens` greedy
tokens with no early stop, timed from image encoding to the last token).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ..utils import atomic_write
from .memory import PeakMemory
from .vlm_models import VLMBenchConfig
from .vlm_sides import make_side

COBRA_PROMPT = "Describe the image specifically"
MIB = 1024 * 1024


@dataclass
class ContextResult:
    side: str
    context_tokens: int
    image_tokens: int
    prefill_chunk: int  # 0: one call
    prefill_calls: int
    image_encode_s: float  # the vision tower + projector alone, timed before the prefill
    prefill_s: float  # image encoding + the whole context through the LM
    prefill_tok_s: float  # context_tokens / prefill_s
    lm_prefill_tok_s: float  # context_tokens / (prefill_s - image_encode_s): the language model's share
    decode_steps: int
    decode_ms_median: float
    decode_ms_min: float
    decode_ms_max: float
    decode_tok_s: float  # 1000 / decode_ms_median
    baseline_memory_mb: float  # the models, before the measurement
    peak_memory_mb: float  # prefill + decode, models included
    decode_memory_mb: float  # current memory after the last decode step
    state_or_cache_mb: float  # RWKVState / KV cache after the decode steps
    memory_method: str
    threads: int
    loadavg_1min: float


@dataclass
class CobraResult:
    side: str
    new_tokens: int
    prompt_tokens: int  # positions, the image's included
    image_tokens: int
    image_encode_s: float
    total_s: float
    tokens_per_s: float  # new_tokens / total_s
    baseline_memory_mb: float
    peak_memory_mb: float
    memory_method: str
    threads: int
    loadavg_1min: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _tokenizer():
    from ..rwkv.tokenizer import Tokenizer

    return Tokenizer()


@torch.no_grad()
def run_context(side, job: dict, device: torch.device) -> ContextResult:
    length, chunk, steps = job["length"], job["chunk"], job["decode_steps"]
    g = torch.Generator().manual_seed(job.get("seed", 0))
    before = _tokenizer().encode("User: ")
    if length < len(before) + side.image_tokens + 1:
        raise ValueError(f"context length {length} cannot hold one image ({side.image_tokens} positions) and text")
    filler = torch.randint(1, 65530, (length,), generator=g).tolist()
    ids = side.context_ids(before, filler, length)
    pixels = side.pixels(g)
    side.warm_up(filler[:16])
    memory = PeakMemory(device)
    memory.reset()
    baseline = memory.current_bytes()
    _, image_s = _timed(lambda: side.encode_image(pixels), device)
    result, prefill_s = _timed(lambda: side.prefill(ids, pixels, chunk), device)
    logits, state = result.logits, result.memory
    latencies = []
    for _ in range(steps + 2):  # the first two steps warm up
        (logits, state), dt = _timed(lambda: side.step(int(logits.argmax()), state), device)
        latencies.append(dt * 1000)
    latencies = latencies[2:]
    median = statistics.median(latencies)
    return ContextResult(
        side=side.name, context_tokens=length, image_tokens=side.image_tokens, prefill_chunk=chunk,
        prefill_calls=result.chunks, image_encode_s=image_s, prefill_s=prefill_s, prefill_tok_s=length / prefill_s,
        lm_prefill_tok_s=length / max(prefill_s - image_s, 1e-9),
        decode_steps=steps, decode_ms_median=median, decode_ms_min=min(latencies), decode_ms_max=max(latencies),
        decode_tok_s=1000 / median, baseline_memory_mb=baseline / MIB, peak_memory_mb=memory.peak_bytes() / MIB,
        decode_memory_mb=memory.current_bytes() / MIB, state_or_cache_mb=side.memory_bytes(state) / MIB,
        memory_method=memory.method, threads=torch.get_num_threads(), loadavg_1min=os.getloadavg()[0])


@torch.no_grad()
def run_cobra(side, job: dict, device: torch.device) -> CobraResult:
    new_tokens = job["new_tokens"]
    g = torch.Generator().manual_seed(job.get("seed", 0))
    ids = side.chat_prompt(COBRA_PROMPT, _tokenizer())
    pixels = side.pixels(g)
    side.generate(ids, pixels, 2)  # warm-up, the vision tower included
    _, image_s = _timed(lambda: side.encode_image(pixels), device)
    memory = PeakMemory(device)
    memory.reset()
    baseline = memory.current_bytes()
    generated, total_s = _timed(lambda: side.generate(ids, pixels, new_tokens), device)
    if generated != new_tokens:
        raise RuntimeError(f"{side.name} generated {generated} tokens, expected exactly {new_tokens}")
    return CobraResult(
        side=side.name, new_tokens=new_tokens, prompt_tokens=side.positions(ids), image_tokens=side.image_tokens,
        image_encode_s=image_s, total_s=total_s, tokens_per_s=new_tokens / total_s,
        baseline_memory_mb=baseline / MIB, peak_memory_mb=memory.peak_bytes() / MIB, memory_method=memory.method,
        threads=torch.get_num_threads(), loadavg_1min=os.getloadavg()[0])


def run_jobs(jobs: list[dict]) -> list[dict]:
    """Build the side's model once and run the jobs in order (all must share side and config)."""
    if not jobs or any((j["side"], j["config"]) != (jobs[0]["side"], jobs[0]["config"]) for j in jobs):
        raise ValueError("a worker runs one or more jobs of a single side and config")
    if jobs[0].get("threads"):
        torch.set_num_threads(jobs[0]["threads"])
    config = VLMBenchConfig.from_dict(jobs[0]["config"])
    side = make_side(jobs[0]["side"], config)
    device = torch.device(config.device)
    runners = {"context": run_context, "cobra": run_cobra}
    results = []
    for job in jobs:
        if job["kind"] not in runners:
            raise ValueError(f"unknown job kind {job['kind']!r}")
        results.append(asdict(runners[job["kind"]](side, job, device)))
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m visualrwkv.bench.vlm_worker JOBS.json RESULTS.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        jobs = json.load(f)
    results = run_jobs(jobs)
    with atomic_write(argv[1], "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
