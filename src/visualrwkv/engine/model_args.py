"""--model, --dtype and --device: how every command that runs a model picks and places it.

Kept free of torch imports, so building the CLI's parsers (`visualrwkv --help`) stays instant.
"""

from __future__ import annotations

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def add_model_arguments(p, what: str = "model directory or official checkpoint") -> None:
    p.add_argument("--model", help=f"{what} (default: the shipped tiny model)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32",
                   help="weights' dtype (default fp32; bf16 halves the memory and the bytes a decode step reads; "
                        "the recurrent WKV state stays fp32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_model_from_args(args):
    from .defaults import load_model

    return load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device)
