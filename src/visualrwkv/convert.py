"""`visualrwkv convert SRC OUT_DIR`: official VisualRWKV checkpoints → our directory format."""

from __future__ import annotations

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def run(args) -> int:
    import torch

    from .model import VisualRWKV

    model = VisualRWKV.from_pretrained(args.src)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model.save_pretrained(args.out, dtype=dtype)
    cfg = model.config
    print(f"wrote {args.out}: RWKV-6 C={cfg.rwkv.n_embd} L={cfg.rwkv.n_layer}, vision {cfg.vision.kind} "
          f"({model.vit.num_tokens} tokens × {model.vit.hidden_size}), projector {cfg.projector}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an official VisualRWKV checkpoint to the visualrwkv format")
    p.add_argument("src", help="VisualRWKV-v060-*.pth, {name}_rwkv.pth with {name}_visual.pth beside it, "
                                "or a training step folder (step-N: its trained parameters on the run's init)")
    p.add_argument("out", help="output directory (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store weights in this dtype (default: as loaded, float32)")
    p.set_defaults(func=run)
