"""`visualrwkv bench ...`: speed and memory benchmarks (never run as timed tests)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed/memory benchmarks")
    sub = p.add_subparsers(dest="bench_command", metavar="<benchmark>", required=True)
    from . import lm

    lm.add_arguments(sub.add_parser("lm", help="RWKV-6 LM prefill/decode vs the rwkv package, same weights"))
    from . import vlm; vlm.add_arguments(sub.add_parser("vlm", help="VisualRWKV vs HF LLaVA of matched size"))  # noqa: E702
    from ..engine import bench as engine_bench

    engine_bench.add_arguments(sub.add_parser("engine", help="engine tokens/s with 1, 8 and 32 concurrent streams"))
