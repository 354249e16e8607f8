"""`visualrwkv convert SRC OUT`: official checkpoints → our formats, and back (OUT ending in `.pth`:
the official full-checkpoint layout, vision/official_v7.py).

A VisualRWKV checkpoint becomes a model directory (config.json + model.safetensors); a language model
alone (`RWKV-x060-World-*.pth`, `RWKV-x070-World-*.pth`) becomes one `.safetensors` file with its
config in the metadata, which `load_rwkv` reads without unpickling anything.

`visualrwkv quantize MODEL OUT --bits 8|4`: the language model's large matrices as int8 or int4.
"""

from __future__ import annotations

from pathlib import Path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def is_language_model_file(path: Path) -> bool:
    """A plain RWKV LM file: top-level `emb.weight` and no VisualRWKV parts (an exported `*_rwkv.pth`
    has its `*_visual.pth` beside it and converts as a VisualRWKV)."""
    from .rwkv.checkpoint import read_state_dict

    if not path.is_file() or path.name.endswith(("_rwkv.pth", "_visual.pth")):
        return False
    keys = read_state_dict(path).keys()  # memory-mapped: reading the keys loads no weights
    return "emb.weight" in keys and not any(k.startswith(("proj.", "vit.")) for k in keys)


def run(args) -> int:
    dtype = args.dtype
    src = Path(args.src)
    if is_language_model_file(src):
        from .rwkv.checkpoint import load_rwkv, save_rwkv

        if not str(args.out).endswith(".safetensors"):
            raise ValueError(f"{src} is a language model alone: it converts to one file; give OUT ending "
                             f"in .safetensors (got {args.out!r})")
        lm = load_rwkv(src, dtype=dtype)
        save_rwkv(lm, args.out, dtype=dtype)
        cfg = lm.config
        print(f"wrote {args.out}: RWKV-{cfg.version} C={cfg.n_embd} L={cfg.n_layer} H={cfg.n_head} "
              f"vocabulary {cfg.vocab_size}")
        return 0

    from .model import VisualRWKV

    if str(args.out).endswith(".pth"):  # back to the official full-checkpoint layout
        import torch

        from .vision.official_v7 import save_official

        model = VisualRWKV.from_pretrained(args.src)
        count = save_official(model, args.out, getattr(torch, dtype) if dtype else None)
        print(f"wrote {args.out}: {count} tensors in the official layout (rwkv.*, proj.*, vit.*)")
        return 0
    model = VisualRWKV.from_pretrained(args.src, dtype=dtype)
    model.save_pretrained(args.out, dtype=dtype)
    cfg = model.config
    print(f"wrote {args.out}: RWKV-{cfg.rwkv.version} C={cfg.rwkv.n_embd} L={cfg.rwkv.n_layer}, vision "
          f"{cfg.vision.kind} ({model.vit.num_tokens} tokens × {model.vit.hidden_size}), projector {cfg.projector}")
    return 0


def run_quantize(args) -> int:
    from .rwkv.checkpoint import load_rwkv, save_rwkv
    from .rwkv.precision import large_matrices

    src, precision = Path(args.model), f"int{args.bits}"
    if not src.exists():
        raise FileNotFoundError(f"model path {str(src)!r} does not exist")
    if is_language_model_file(src):
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
    p = subparsers.add_parser("convert", help="convert an official VisualRWKV or RWKV checkpoint to the visualrwkv format")
    p.add_argument("src", help="VisualRWKV-v060-*.pth or VisualRWKV-v0700-*.pth, {name}_rwkv.pth with {name}_visual.pth beside it, "
                               "a training step folder (step-N: its trained parameters on the run's init), "
                               "or a language model alone (RWKV-x060/x070-World-*.pth)")
    p.add_argument("out", help="output directory (config.json + model.safetensors); for a language model alone, "
                               "a .safetensors file; a name ending in .pth: the official full-checkpoint layout "
                               "(rwkv.*, proj.*, vit.*) of a VisualRWKV model")
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
