"""`visualrwkv train --config PRESET|FILE [--option value ...]`: train or fine-tune VisualRWKV.

Fine-tune the shipped model (or --model MODEL) on your own LLaVA JSON, batch and schedule fitted to it:
    visualrwkv train --config finetune --data my/data.json
`visualrwkv train --config PRESET --help` shows that preset's values. Many GPUs: the same command
under torchrun (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import MISSING, fields


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return str(value)


def options_help(preset: str | None = None, runs_dir: str = "runs", width: int | None = None) -> str:
    """Every training option with its type, default (the preset's value, given one) and meaning,
    grouped as TrainConfig groups them: read from the dataclass, so it cannot go stale."""
    from .config import PRESET_SUMMARIES, TrainConfig, load_stages

    stages = load_stages(preset, runs_dir) if preset else [{}]
    width = width or min(100, max(60, os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty()
                                  else 100))
    lines = []
    if preset:
        summary = PRESET_SUMMARIES.get(preset, "")
        lines += textwrap.wrap(f"preset {preset}: {summary}" if summary else f"config {preset}", width)
        if len(stages) > 1:
            lines.append(f"({len(stages)} stages; the values shown are the last stage's)")
    stage = stages[-1]
    fitted = set(stage.get("fit_to_data", []))
    group = None
    for f in fields(TrainConfig):
        if f.metadata.get("group") != group:
            group = f.metadata.get("group")
            lines += ["" if lines else None, f"{group} options:"]
        default = f.default if f.default is not MISSING else f.default_factory()
        value = "fitted, see fit_to_data" if f.name in fitted else _shown(stage.get(f.name, default))
        head, indent = f"  --{f.name} {f.type.upper()}", 30 * " "
        if len(head) >= len(indent) - 1:  # a long name: its meaning starts on the next line
            lines.append(head)
            head = ""
        lines += textwrap.wrap(f"{f.metadata.get('help', '')} (default: {value})", width,
                               initial_indent=head.ljust(len(indent)), subsequent_indent=indent)
    return "\n".join(line for line in lines if line is not None)


class _HelpAction(argparse.Action):
    """-h/--help: the command's usage, then every option, with the values of the preset given before it."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        try:
            print("\n" + options_help(getattr(namespace, "config", None), getattr(namespace, "runs_dir", "runs")))
        except ValueError as e:
            parser.exit(2, f"visualrwkv train: error: {e}\n")
        parser.exit()


def run(args) -> int:
    from .config import parse_overrides, resolve
    from .trainer import Trainer, prepare_data
    from .vision_pretrain import pretrain_tiny_vision

    if not args.config:
        raise ValueError("--config is required: a preset (finetune, stage1, stage2, v7_stage1, v7_stage2, tiny) or a JSON config file; "
                         "`visualrwkv train --help` lists the options")
    stages = resolve(args.config, parse_overrides(args.overrides), runs_dir=args.runs_dir)
    for cfg in stages:  # every stage's data checked before the first one spends an hour
        check_data(cfg)
    previous = None
    for i, cfg in enumerate(stages):
        if len(stages) > 1:
            print(f"== stage {i + 1}/{len(stages)}: {cfg.out_dir}")
        if previous is not None and not cfg.init:
            cfg.init, cfg.model = str(previous), {}
        if cfg.task == "vision_shapes":
            prepare_data(cfg)
            previous = pretrain_tiny_vision(cfg)
        else:
            previous = Trainer(cfg).train()
    print(f"{'adapter' if stages[-1].adapter else 'model'} written to {previous}")
    return 0


def check_data(cfg) -> None:
    """One clear error for a stage whose training data is not given or not there (generated data aside)."""
    from ..utils import why_missing

    if cfg.prepare == "shapes":
        return
    if not cfg.data_files:
        raise ValueError("no training data: pass --data FILE (LLaVA-format conversations, .json or .jsonl)")
    for path in cfg.data_files:
        if not os.path.isfile(path):
            raise ValueError(f"--data {path} {why_missing(path)}; expected a LLaVA-format .json or .jsonl file")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune VisualRWKV (presets; torchrun for many GPUs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              add_help=False)
    p.add_argument("-h", "--help", action=_HelpAction, help="show this help, every option and its default "
                   "(after --config: that preset's values), and exit")
    p.add_argument("--config", help="a preset (finetune, stage1, stage2, v7_stage1, v7_stage2, tiny) or a JSON config file")
    p.add_argument("--runs-dir", default=os.environ.get("VISUALRWKV_RUNS", "runs"),
                   help="where presets put their data and outputs (default: runs)")
    p.set_defaults(func=run, overrides=[])  # any other --option value overrides a training option
