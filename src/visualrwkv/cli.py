"""`visualrwkv <command>`: one entry point; each command lives in the module that does the work.

A command module exposes `add_parser(subparsers)`, which registers its sub-parser and sets
`func=run` with `run(args) -> int | None`. Modules are imported only when listed here, and heavy
imports stay inside `run`, so `visualrwkv --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "visualrwkv.demo",
    "visualrwkv.data.cli",
    "visualrwkv.train.cli",
    "visualrwkv.convert",
    "visualrwkv.eval.cli",
    "visualrwkv.bench.cli",
    "visualrwkv.chat_cli",
    "visualrwkv.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visualrwkv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
