"""`visualrwkv <command>`: one entry point; each command lives in the module that does the work.

A command module exposes `add_parser(subparsers)`, which registers its sub-parser(s) and sets
`func=run` with `run(args) -> int | None`. Only the module of the command being run is imported
(the listing below is all `visualrwkv --help` needs), and heavy imports stay inside `run`, so
`--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command → (the module that registers it, the line `visualrwkv --help` shows for it)
COMMANDS = {
    "demo": ("visualrwkv.demo", "answer questions about the bundled example images"),
    "ask": ("visualrwkv.chat_cli", "answer one question about an image (streamed to stdout)"),
    "chat": ("visualrwkv.chat_cli", "a conversation about an image, with line editing and history"),
    "serve": ("visualrwkv.serve.cli", "OpenAI-compatible HTTP server (continuous batching, streaming)"),
    "webui": ("visualrwkv.serve.cli", "browser demo: image upload, streaming multi-turn chat (Gradio)"),
    "train": ("visualrwkv.train.cli", "train or fine-tune VisualRWKV (presets; torchrun for many GPUs)"),
    "eval": ("visualrwkv.eval.cli", "benchmarks: run a model on one, score predictions, build fixtures"),
    "convert": ("visualrwkv.convert", "convert an official VisualRWKV or RWKV checkpoint to the visualrwkv format"),
    "quantize": ("visualrwkv.convert", "store the language model's large matrices as int8 or int4"),
    "merge": ("visualrwkv.adapters.cli", "fold a LoRA adapter into its base model: a standalone model folder"),
    "data": ("visualrwkv.data.cli", "dataset tools"),
    "bench": ("visualrwkv.bench.cli", "speed and memory benchmarks"),
    "ablate": ("visualrwkv.ablate.cli", "the paper's ablations at small scale, with error bars (resumable)"),
}

EPILOG = """examples:
  visualrwkv demo                                   the shipped tiny model on its example images
  visualrwkv ask --image photo.jpg "What is in the picture?"
  visualrwkv chat --image photo.jpg                 follow-up questions; Ctrl-C stops an answer
  visualrwkv serve --model org/name                 a Hub id, a model folder or an official .pth
  visualrwkv train --config finetune --data mine.json

`visualrwkv <command> --help` describes a command. $VISUALRWKV_MODEL sets the default --model."""


def _version() -> str:
    from . import __version__

    return f"visualrwkv {__version__}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, that command's module registers its real sub-parser(s), and
    every other command is only listed."""
    parser = argparse.ArgumentParser(prog="visualrwkv", description=__doc__.splitlines()[0].strip("`"),
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    module = COMMANDS[command][0] if command in COMMANDS else None
    if module:
        importlib.import_module(module).add_parser(sub)
    for name, (owner, summary) in COMMANDS.items():
        if owner != module:  # listed only; its module is imported when it is the command
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command named in argv: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides"):  # only commands that take --key value overrides accept unknown flags
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(getattr(args, "overrides") or []) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        # boundary errors (bad input, a missing file, a full disk) carry a message meant for the user:
        # one line, no traceback
        text = e.strerror if isinstance(e, OSError) and e.strerror and not e.filename else str(e)
        message = " ".join(text.split()) or type(e).__name__
        print(f"visualrwkv {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvisualrwkv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
