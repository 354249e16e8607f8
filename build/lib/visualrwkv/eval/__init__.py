"""Benchmarks without the model: read the standard public file layouts, score answer files, build fixtures.

    items = read_items("pope", "data/eval/pope")                    # EvalItems, stable order
    # ... a generation loop answers item.text / item.image, writing prediction_record(item, text) lines ...
    result = score_predictions("pope", "data/eval/pope", "answers.jsonl")
    print(render_markdown([result]))

Tasks: vqav2, gqa, scienceqa, textvqa, pope, mme, mmbench, seed. `visualrwkv eval layout` prints the files each
task expects under its --data folder (the names of the LLaVA-1.5 evaluation bundle and of the official releases);
`build_fixture` writes a tiny dataset in that layout. Scorers are pinned per SPEC §10 and every result names the
variant it used. Malformed input raises `EvalDataError` (a ValueError) naming the file, the line and the problem.
"""

from visualrwkv.eval.benchmarks import (
    TASK_NAMES,
    build_fixture,
    get_task,
    read_items,
    score_items,
    score_predictions,
)
from visualrwkv.eval.items import EvalDataError, EvalItem, EvalResult
from visualrwkv.eval.predictions import prediction_record, read_predictions
from visualrwkv.eval.report import render_json, render_markdown
from visualrwkv.eval.tasks.vqav2 import write_submission as write_vqav2_submission

__all__ = [
    "TASK_NAMES",
    "EvalDataError",
    "EvalItem",
    "EvalResult",
    "build_fixture",
    "get_task",
    "prediction_record",
    "read_items",
    "read_predictions",
    "render_json",
    "render_markdown",
    "score_items",
    "score_predictions",
    "write_vqav2_submission",
]
