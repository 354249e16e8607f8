"""`visualrwkv ablate --study position|scanning|decay|loss|stages|all [--seeds N] [--out DIR]`

The paper's ablations at small scale: each arm of a study trains the same tiny model from the same
seed with one factor changed, on the harder shapes data, is scored on its held-out split, and is
repeated over seeds. Resumable: run the same command again after a stop and only the runs without a
result are trained. Writes DIR/results.md, results.json and a PNG per study (docs/ablations.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .studies import STUDY_NAMES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ablate", help="the paper's ablations at small scale, with error bars (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, choices=[*STUDY_NAMES, "all"], help="which study (all: every one)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    p.add_argument("--out", default="runs/ablate", help="output folder; also where a stopped study resumes "
                   "(default: runs/ablate)")
    p.add_argument("--recipe", default="default", choices=["default", "smoke"],
                   help="run sizes: default (about an hour for --study all --seeds 3 on 2 CPU cores) or smoke "
                   "(a few steps: checks the machinery, not the numbers)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1: a fair share of a "
                   "shared machine; oversubscribed OpenMP threads slow every job down)")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's model folder (default: only its "
                   "result is kept)")
    p.add_argument("--report-only", action="store_true", help="write the tables and plots from the results "
                   "there are, training nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from .studies import studies_of

    studies = studies_of(args.study)
    out = Path(args.out)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, studies, out)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) gets its threads back


def _run(args, studies, out: Path) -> int:
    from .report import write_report
    from .runner import load_results, log, run_studies

    if args.report_only:
        if not (out / "results").is_dir():
            raise ValueError(f"{out} holds no results (no {out / 'results'} folder)")
        results = load_results(out / "results")
    else:
        results = run_studies(studies, args.seeds, out, args.recipe, keep_runs=args.keep_runs)
    report = write_report(studies, results, out)
    for s in report["studies"]:
        print(s["verdict"]["text"])
    log(f"wrote {out / 'results.md'}, {out / 'results.json'} and "
        + ", ".join(f"{s['study']}.png" for s in report["studies"]))
    return 0
