"""`visualrwkv eval`: score benchmark predictions, write a VQAv2 submission, build offline fixtures."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from visualrwkv.eval.benchmarks import TASK_NAMES

    parser = subparsers.add_parser("eval", help="benchmarks: score predictions, build offline fixtures",
                                   description=__doc__.splitlines()[0])  # fmt: skip
    sub = parser.add_subparsers(dest="eval_command", metavar="<eval command>")
    parser.set_defaults(func=lambda args: _print_help(parser))

    score = sub.add_parser("score", help="score a predictions JSONL against a benchmark folder")
    score.add_argument("--task", required=True, choices=TASK_NAMES)
    score.add_argument("--data", required=True, help="the benchmark folder (see `visualrwkv eval layout`)")
    score.add_argument("--predictions", required=True, help='JSONL of {"question_id", "text"[, "round_id"]} lines')
    score.add_argument("--variant", help="scorer variant (default: the task's first; vqav2: official|evalai)")
    score.add_argument("--split", help="benchmark split (default: the task's first; vqav2: val|testdev)")
    score.add_argument("--only-answered", action="store_true",
                       help="score only prompts that have a prediction (partial runs; not comparable)")  # fmt: skip
    score.add_argument("--out", help="also write the result as JSON to this file")
    score.set_defaults(func=run_score)

    fixture = sub.add_parser("fixture", help="write a tiny offline dataset in a task's file layout")
    fixture.add_argument("--task", required=True, choices=(*TASK_NAMES, "all"))
    fixture.add_argument("--out", required=True, help="folder to write (with --task all: one sub-folder per task)")
    fixture.add_argument("--n", type=int, default=4, help="questions/images per split or subtask (default 4)")
    fixture.add_argument("--seed", type=int, default=0)
    fixture.set_defaults(func=run_fixture)

    submission = sub.add_parser("submission", help="write the VQAv2 test-dev result file for the EvalAI server")
    submission.add_argument("--data", required=True, help="the VQAv2 folder")
    submission.add_argument("--predictions", required=True)
    submission.add_argument("--out", required=True, help="result JSON to write")
    submission.set_defaults(func=run_submission)

    layout = sub.add_parser("layout", help="print the files each task expects under --data")
    layout.set_defaults(func=run_layout)
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_score(args) -> int:
    from visualrwkv.eval.benchmarks import score_predictions
    from visualrwkv.eval.report import render_json, render_markdown
    from visualrwkv.utils import atomic_write

    result = score_predictions(args.task, args.data, args.predictions, variant=args.variant, split=args.split,
                               only_answered=args.only_answered)  # fmt: skip
    print(render_markdown([result]), end="")
    if args.out:
        with atomic_write(args.out, "w") as f:
            f.write(render_json([result]))
    return 0


def run_fixture(args) -> int:
    from pathlib import Path

    from visualrwkv.eval.benchmarks import TASK_NAMES, build_fixture

    tasks = TASK_NAMES if args.task == "all" else (args.task,)
    for task in tasks:
        out = Path(args.out) / task if args.task == "all" else Path(args.out)
        oracle = build_fixture(task, out, n=args.n, seed=args.seed)
        print(f"{task}: wrote {out} (a perfect model's answers: {oracle})")
    return 0


def run_submission(args) -> int:
    from visualrwkv.eval.tasks.vqav2 import write_submission

    n = write_submission(args.data, args.predictions, args.out)
    print(f"wrote {n} answers to {args.out}")
    return 0


def run_layout(args) -> int:
    from visualrwkv.eval.benchmarks import TASK_NAMES, get_task

    for name in TASK_NAMES:
        spec = get_task(name)
        print(f"{name} ({spec.title}; splits {', '.join(spec.splits)}; variants {', '.join(spec.variants)}):")
        print("  " + spec.layout.replace("\n", "\n  "))
    return 0
