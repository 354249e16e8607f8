"""`visualrwkv merge --model BASE --adapter DIR OUT`: a LoRA adapter folded into a standalone model.

The merged model is an ordinary visualrwkv model folder (config.json + model.safetensors): it loads
without peft and without the adapter, and can be converted or quantized like any other."""

from __future__ import annotations

import argparse


def run(args) -> int:
    from ..engine.defaults import DEFAULT_MODEL_DIR
    from ..model import VisualRWKV
    from ..utils import announce_if_slow

    base = args.model or "tiny"
    with announce_if_slow(f"loading {base} and merging {args.adapter}"):
        model = VisualRWKV.from_pretrained(DEFAULT_MODEL_DIR if base == "tiny" else base, adapter=args.adapter)
    with announce_if_slow(f"writing {args.out}"):
        model.save_pretrained(args.out, dtype=args.dtype)
    print(f"merged model written to {args.out}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("merge", help="fold a LoRA adapter into its base model: a standalone model folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory (config.json + model.safetensors)")
    p.add_argument("--model", help="the base model the adapter was trained on: a model folder, an official .pth, "
                                   "a Hub id or \"tiny\" (default: tiny)")
    p.add_argument("--adapter", required=True, metavar="DIR",
                   help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="store the merged model's large matrices in this dtype (default float32)")
    p.set_defaults(func=run)
