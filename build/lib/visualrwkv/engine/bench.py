"""Engine throughput with 1, 8 and 32 concurrent streams (`visualrwkv bench engine`).

Each stream asks its own question about one image (so every prefill runs; the prefix cache is off)
and generates exactly `new_tokens` tokens (stops disabled), all submitted at once. Reported per
stream count: total generated tokens / wall time from submission to the last token (prefills
included), the same per stream, and the mean time to the first token.
"""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class EngineBenchRow:
    streams: int
    new_tokens: int  # per stream
    seconds: float
    tokens_per_s: float  # all streams together
    tokens_per_s_per_stream: float
    first_token_s: float  # mean time from submission to a stream's first text


def bench_image():
    from PIL import Image

    from visualrwkv.engine.engine import ImageInput

    x = torch.linspace(0, 255, 224).to(torch.uint8)
    pixels = torch.stack([x[None, :].expand(224, 224), x[:, None].expand(224, 224),
                          x.flip(0)[None, :].expand(224, 224)], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buf, "PNG")
    return ImageInput.from_bytes(buf.getvalue())


def bench_engine(model, streams: tuple[int, ...] = (1, 8, 32), new_tokens: int = 64,
                 question: str = "Describe the image specifically.", temperature: float = 1.0,
                 log=print) -> list[EngineBenchRow]:
    """`temperature` 0 is greedy decoding; above 0, each step also sorts every row's distribution
    (top-p), which on CPUs can cost more than the model step itself."""
    from visualrwkv.engine.engine import Engine
    from visualrwkv.engine.sampling import SamplingParams

    if new_tokens < 1 or not streams or min(streams) < 1:
        raise ValueError(f"need new_tokens >= 1 and stream counts >= 1, got {new_tokens}, {streams}")
    image = bench_image()
    rows = []
    for n in streams:
        with Engine(model, max_batch_size=n, cache_bytes=0) as engine:
            engine.generate(engine.build_prompt(question, image), SamplingParams(max_tokens=4))  # warm-up
            prompts = [engine.build_prompt(f"{question} (stream {i})", image) for i in range(n)]
            params = [SamplingParams(max_tokens=new_tokens, stop=[], stop_token_ids=[], seed=i,
                                     temperature=temperature) for i in range(n)]
            first: list[float] = [0.0] * n
            start = time.perf_counter()
            handles = [engine.submit(p, s) for p, s in zip(prompts, params)]

            def consume(i: int) -> None:
                for _ in handles[i]:
                    if not first[i]:
                        first[i] = time.perf_counter() - start
            readers = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
            for t in readers:
                t.start()
            for t in readers:
                t.join()
            seconds = time.perf_counter() - start
            total = sum(h.result().completion_tokens for h in handles)
        row = EngineBenchRow(n, new_tokens, seconds, total / seconds, total / seconds / n,
                             statistics.mean(f for f in first if f) if any(first) else float("nan"))
        log(f"  {n:3d} streams: {row.tokens_per_s:8.1f} tok/s total, {row.tokens_per_s_per_stream:7.1f} per stream, "
            f"first token after {row.first_token_s * 1000:.0f} ms")
        rows.append(row)
    return rows


def markdown_table(rows: list[EngineBenchRow]) -> str:
    lines = ["| streams | tokens/stream | wall s | tok/s total | tok/s per stream | first token ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.streams} | {r.new_tokens} | {r.seconds:.2f} | {r.tokens_per_s:.1f} | "
                     f"{r.tokens_per_s_per_stream:.1f} | {r.first_token_s * 1000:.0f} |")
    return "\n".join(lines)


def random_model(n_embd: int = 128, n_layer: int = 2):
    """A random VisualRWKV with the full vocabulary and a small tiny-kind encoder, for speed only."""
    from visualrwkv.model import VisualRWKV, VisualRWKVConfig
    from visualrwkv.rwkv.model import RWKVConfig
    from visualrwkv.testing import random_rwkv6_state_dict
    from visualrwkv.vision.encoders import VisionConfig

    model = VisualRWKV(VisualRWKVConfig(rwkv=RWKVConfig(n_embd=n_embd, n_layer=n_layer), vision=VisionConfig("tiny")))
    model.rwkv.load_state_dict(random_rwkv6_state_dict(n_embd, n_layer, seed=0))
    return model.eval()


def add_arguments(p) -> None:
    from visualrwkv.engine.model_args import add_model_arguments

    add_model_arguments(p, "model directory or checkpoint (see also --random)")
    p.add_argument("--random", metavar="CxL", help="use random weights of this size instead, e.g. 768x12")
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32], help="concurrent streams (default 1 8 32)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per stream (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0, sampled with top-p)")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from visualrwkv.engine.model_args import load_model_from_args
    from visualrwkv.utils import atomic_write

    if args.random:
        try:
            n_embd, n_layer = (int(x) for x in args.random.lower().split("x"))
        except ValueError:
            raise ValueError(f"--random must look like 768x12 (WIDTHxLAYERS), got {args.random!r}") from None
        model = random_model(n_embd, n_layer).set_precision(args.dtype or "float32").to(args.device)
        model.rwkv.use_gemv_layout()
        if args.compile:
            model.rwkv.compile_step()
        name = f"random C{n_embd}/L{n_layer}"
    else:
        model, name = load_model_from_args(args), args.model or "default tiny model"
    print(f"engine benchmark: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench_engine(model, tuple(args.streams), args.new_tokens, temperature=args.temperature)
    print(markdown_table(rows))
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump({"model": name, "temperature": args.temperature, "threads": torch.get_num_threads(),
                       "torch": torch.__version__,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0
