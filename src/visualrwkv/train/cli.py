"""`visualrwkv train --config FILE|PRESET [--key value ...]`.

Presets: stage1 / stage2 (the paper's v6.0 recipe; set --data, --image-root and --init or --init-lm)
and tiny (the embedded default: generated shapes data, both stages from scratch on a CPU).
Multi-GPU / multi-node: launch the same command with torchrun (see docs/training.md).
"""

from __future__ import annotations

import os


def run(args) -> int:
    from .config import parse_overrides, resolve
    from .trainer import Trainer, prepare_data
    from .vision_pretrain import pretrain_tiny_vision

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
    print(f"model written to {previous}")
    return 0


def check_data(cfg) -> None:
    """One clear error for a stage whose training data is not given or not there (generated data aside)."""
    from ..utils import why_missing

    if cfg.prepare == "shapes":
        return
    if not cfg.data:
        raise ValueError("no training data: pass --data FILE (LLaVA-format conversations, .json or .jsonl)")
    if not os.path.isfile(cfg.data):
        raise ValueError(f"--data {cfg.data} {why_missing(cfg.data)}; expected a LLaVA-format .json or .jsonl file")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train VisualRWKV (two-stage recipe; torchrun for many GPUs)",
                              description=__doc__)
    p.add_argument("--config", required=True, help="a preset (stage1, stage2, tiny) or a JSON config file")
    p.add_argument("--runs-dir", default=os.environ.get("VISUALRWKV_RUNS", "runs"),
                   help="where presets put their data and outputs (default: runs)")
    p.set_defaults(func=run, overrides=[])  # any other --key value overrides a training option
