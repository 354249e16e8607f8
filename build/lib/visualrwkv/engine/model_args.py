"""--model, --dtype, --device and --compile: how every command that runs a model picks and places it.

Kept free of torch imports, so building the CLI's parsers (`visualrwkv --help`) stays instant.
Float dtype names are torch's, as in `visualrwkv convert --dtype` and `bench vlm --dtype`.
"""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16", "int8", "int4")  # = rwkv.precision.PRECISIONS
TEXT_ONLY_LAYOUTS = ("image-slot", "plain")  # = visualrwkv.model.TEXT_ONLY_LAYOUTS (no torch import here)


def add_model_arguments(p, what: str = "a model folder, an official .pth, \"tiny\" or a Hugging Face Hub id "
                                      "(org/name[@revision][/file.pth])") -> None:
    p.add_argument("--model", help=f"{what} (default: $VISUALRWKV_MODEL, else the shipped tiny model)")
    p.add_argument("--download", action="store_true",
                   help="fetch a Hub model that is not in the Hugging Face cache yet (otherwise nothing is downloaded)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="the language model's large matrices (projections, FFN, head, embedding) in this precision; "
                        "everything else, the state and the decoding arithmetic stay float32. bfloat16 halves the "
                        "bytes a decode step reads, int8 and int4 (quantized on load, or as stored by `visualrwkv "
                        "quantize`) take ~0.27 and ~0.14 of fp32's. Default: float32, or a quantized model's format")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--compile", action="store_true",
                   help="decode with torch.compile where the compiled CPU step does not apply (a GPU, more than "
                        "16 rows, float16); compiles on first use, falls back to eager with a warning")
    p.add_argument("--adapter", metavar="DIR",
                   help="a LoRA adapter folder (PEFT format, from `visualrwkv train --config finetune-lora`), merged "
                        "into the weights at load, so decoding runs at the base model's speed")
    p.add_argument("--state", metavar="FILE",
                   help="a state-tuning file (from `visualrwkv train --config finetune-state`): every prompt starts "
                        "from this trained initial state")
    p.add_argument("--text-only-layout", choices=TEXT_ONLY_LAYOUTS,
                   help="prompts without an image: image-slot = the official v6.0 layout (the image's place holds "
                        "zero vectors, scanned like an image; what the released v6.0 models were trained with), "
                        "plain = the text alone (default: the model config's; image-slot for v6.0 models)")


def load_model_from_args(args):
    from .defaults import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, compile=args.compile,
                      text_only_layout=getattr(args, "text_only_layout", None), download=getattr(args, "download", False),
                      adapter=getattr(args, "adapter", None), state=getattr(args, "state", None))
