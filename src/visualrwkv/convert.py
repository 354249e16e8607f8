"""`visualrwkv convert SRC OUT_DIR`: official VisualRWKV checkpoints → our directory format;
`visualrwkv quantize MODEL OUT --bits 8|4`: the language model's large matrices as int8 or int4."""

from __future__ import annotations

from pathlib import Path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def run(args) -> int:
    from .model import VisualRWKV

    model = VisualRWKV.from_pretrained(args.src, dtype=args.dtype)
    model.save_pretrained(args.out, dtype=args.dtype)
    cfg = model.config
    print(f"wrote {args.out}: RWKV-6 C={cfg.rwkv.n_embd} L={cfg.rwkv.n_layer}, vision {cfg.vision.kind} "
          f"({model.vit.num_tokens} tokens × {model.vit.hidden_size}), projector {cfg.projector}")
    return 0


def _is_language_model_file(path: Path) -> bool:
    """An RWKV checkpoint alone (keys emb.*, blocks.*), not a VisualRWKV one (rwkv.*, proj.*, vit.*)."""
    from .rwkv.checkpoint import read_state_dict

    return not path.is_dir() and not any(k.startswith("rwkv.") for k in read_state_dict(path))


def run_quantize(args) -> int:
    from .rwkv.checkpoint import load_rwkv, save_rwkv
    from .rwkv.precision import large_matrices

    src, precision = Path(args.model), f"int{args.bits}"
    if not src.exists():
        raise FileNotFoundError(f"model path {str(src)!r} does not exist")
    if _is_language_model_file(src):
        if not str(args.out).endswith(".safetensors"):
            raise ValueError(f"{src} is a language model alone: OUT must be a .safetensors file, got {args.out!r}")
        lm = load_rwkv(src, dtype=precision)
        save_rwkv(lm, args.out)
    else:
        from .model import VisualRWKV

        model = VisualRWKV.from_pretrained(src, dtype=precision)
        model.save_pretrained(args.out)
        lm = model.rwkv
    stored = sum(t.numel() * t.element_size() for _, m in large_matrices(lm) for t in (*m.parameters(), *m.buffers()))
    values = sum(m.weight_scales.numel() * m.group_size for _, m in large_matrices(lm))
    print(f"wrote {args.out}: {len(large_matrices(lm))} matrices of the language model in {precision} "
          f"({values / 1e6:.1f} M weights, {stored / 1e6:.1f} MB with their scales; {4 * values / 1e6:.1f} MB in fp32)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an official VisualRWKV checkpoint to the visualrwkv format")
    p.add_argument("src", help="VisualRWKV-v060-*.pth, or {name}_rwkv.pth with {name}_visual.pth beside it")
    p.add_argument("out", help="output directory (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="store the language model's large matrices and the vision side in this dtype, the rest of "
                        "the language model in float32 (default: as loaded, float32)")
    p.set_defaults(func=run)

    q = subparsers.add_parser("quantize", help="store the language model's large matrices as int8 or int4")
    q.add_argument("model", help="a visualrwkv model directory, an official VisualRWKV checkpoint, or a language "
                                 "model alone (an RWKV-6 .pth or .safetensors)")
    q.add_argument("out", help="output directory (for a language model alone: a .safetensors file)")
    q.add_argument("--bits", type=int, choices=(8, 4), required=True,
                   help="8: int8, 4: int4; groups of 32 weights along the input dimension, one fp16 scale each")
    q.set_defaults(func=run_quantize)
