"""`visualrwkv eval`: score benchmark predictions, write a VQAv2 submission, build offline fixtures."""

from __future__ import annotations

import argparse

from visualrwkv.engine.model_args import add_model_arguments


FORMS = """the working forms:
  visualrwkv eval --task pope --data DIR [--model M]      answer a benchmark and score it (= eval run)
  visualrwkv eval score --task pope --data DIR --predictions P.jsonl
  visualrwkv eval heldout --data qa.json [--model M]      exact match per question_type (LLaVA JSON)
  visualrwkv eval fixture --task all --out DIR            tiny offline copies of every benchmark's layout
  visualrwkv eval submission --data VQAV2 --predictions P.jsonl --out result.json
  visualrwkv eval layout                                  the files each task expects under --data
`visualrwkv eval COMMAND --help` describes each."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from visualrwkv.eval.benchmarks import TASK_NAMES

    parser = subparsers.add_parser("eval", help="benchmarks: score predictions, build offline fixtures",
                                   description=__doc__.splitlines()[0], epilog=FORMS,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="eval_command", metavar="<eval command>")
    parser.set_defaults(func=lambda args: _print_help(parser))

    # `visualrwkv eval --task T --data DIR` is short for `visualrwkv eval run --task T --data DIR`
    for target in (parser, sub.add_parser("run", help="answer a benchmark with a model (resumable) and score it")):
        add_run_arguments(target, TASK_NAMES, required=target is not parser)
        target.set_defaults(func=run_run, eval_parser=parser)

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
    fixture.add_argument("--images", type=int, default=1,
                         help="images per question (default 1; more: gqa only, for models that take several)")
    fixture.set_defaults(func=run_fixture)

    submission = sub.add_parser("submission", help="write the VQAv2 test-dev result file for the EvalAI server")
    submission.add_argument("--data", required=True, help="the VQAv2 folder")
    submission.add_argument("--predictions", required=True)
    submission.add_argument("--out", required=True, help="result JSON to write")
    submission.set_defaults(func=run_submission)

    heldout = sub.add_parser("heldout", help="exact-match accuracy per question_type (and per turn) on a LLaVA-format QA file")
    heldout.add_argument("--data", required=True, help="LLaVA JSON: a question per row (one human and one gpt turn), or a "
                         "conversation of several, each asked as a follow-up after the earlier ones")
    heldout.add_argument("--image-root", help="image paths are relative to this (default: the file's folder)")
    add_model_arguments(heldout, "model directory or checkpoint")
    heldout.add_argument("--limit", type=int, help="only the first N rows")
    heldout.add_argument("--out", help="also write the result as JSON to this file")
    heldout.set_defaults(func=run_heldout)

    layout = sub.add_parser("layout", help="print the files each task expects under --data")
    layout.set_defaults(func=run_layout)
    return parser


def add_run_arguments(p, task_names, required: bool) -> None:
    p.add_argument("--task", required=required, choices=task_names)
    p.add_argument("--data", required=required, help="the benchmark folder (see `visualrwkv eval layout`)")
    add_model_arguments(p, "model directory or checkpoint")
    p.add_argument("--out", help="folder for predictions.jsonl and results.{md,json} (default: runs/eval/TASK)")
    p.add_argument("--split", help="benchmark split (default: the task's first)")
    p.add_argument("--variant", help="scorer variant (default: the task's first)")
    p.add_argument("--prompt", help="prompt variant (textvqa: llava | none | before)")
    p.add_argument("--limit", type=int, help="only the first N prompts (a partial, non-comparable score)")
    p.add_argument("--batch-size", type=int, default=16, help="requests decoded together (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--restart", action="store_true",
                   help="answer every question again, discarding predictions already in --out (by default a run "
                        "resumes them, and refuses a --out that holds another model's, dtype's, task's or prompt's)")
    p.add_argument("--imageless", choices=("text-only", "blank-image"), default="text-only",
                   help="questions without an image: text-only = a text prompt in the model's text-only layout "
                        "(what the official v6.0 evaluate.py does for ScienceQA), blank-image = an all-zero pixel "
                        "tensor encoded as the image (what it does for `text` question lines without an image)")


def run_run(args) -> int:
    from visualrwkv.engine.model_args import load_model_from_args
    from visualrwkv.eval.report import render_markdown
    from visualrwkv.eval.run import run_eval

    if not args.task and not args.data:  # a bare `visualrwkv eval`
        return _print_help(args.eval_parser)
    if not args.task or not args.data:
        raise ValueError("eval needs --task and --data (or a sub-command: see `visualrwkv eval --help`)")
    out = args.out or f"runs/eval/{args.task}"
    result = run_eval(args.task, args.data, out, model=load_model_from_args(args), model_path=args.model,
                      split=args.split, variant=args.variant, prompt=args.prompt, limit=args.limit,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, restart=args.restart,
                      imageless=args.imageless)
    print(render_markdown([result]), end="")
    print(f"predictions and results in {out}")
    return 0


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_heldout(args) -> int:
    import dataclasses
    import json

    from visualrwkv.engine.model_args import load_model_from_args
    from visualrwkv.eval.heldout import evaluate_heldout
    from visualrwkv.utils import atomic_write

    result = evaluate_heldout(load_model_from_args(args), args.data, args.image_root, args.limit, progress=True)
    print(result.markdown())
    if args.out:
        with atomic_write(args.out, "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=2)
    return 0


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
        oracle = build_fixture(task, out, n=args.n, seed=args.seed, images=args.images)
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
