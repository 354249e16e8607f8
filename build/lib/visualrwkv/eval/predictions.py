"""Predictions files: LLaVA answer-file lines `{"question_id": ..., "text": prediction, ...}`, one JSON per line.

An optional `round_id` (LLaVA's MMBench rotations) defaults to 0; an optional `prompt` is kept for tasks that
recover the question from it (TextVQA). A first line `{"provenance": {...}}` (written by `eval run`: what
produced the file) is skipped. Lines are matched to `EvalItem`s by (str(question_id), round_id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from visualrwkv.eval.files import field_of, iter_jsonl, write_jsonl
from visualrwkv.eval.items import EvalItem, ItemKey, data_error
from visualrwkv.eval.provenance import is_provenance_record


@dataclass(frozen=True)
class Prediction:
    question_id: str | int
    round_id: int
    text: str
    line: int
    prompt: str | None = None

    @property
    def key(self) -> ItemKey:
        return (str(self.question_id), self.round_id)


def read_predictions(path: str | Path) -> list[Prediction]:
    path = Path(path)
    out: list[Prediction] = []
    for line_no, obj in iter_jsonl(path, "predictions file"):
        if line_no == 1 and is_provenance_record(obj):
            continue  # what produced the file (written by `eval run`), not an answer
        qid = field_of(obj, "question_id", (str, int), path, line_no)
        text = field_of(obj, "text", str, path, line_no)
        round_id = field_of(obj, "round_id", int, path, line_no) if "round_id" in obj else 0
        if round_id < 0:
            raise data_error(path, line_no, f"round_id must be >= 0, got {round_id}")
        prompt = field_of(obj, "prompt", str, path, line_no) if "prompt" in obj else None
        out.append(Prediction(question_id=qid, round_id=round_id, text=text, line=line_no, prompt=prompt))
    return out


Resolver = Callable[[Prediction], "ItemKey | None"]


def match_lines(
    items: Sequence[EvalItem],
    predictions: Sequence[Prediction],
    path: str | Path,
    benchmark: str,
    resolve: Resolver | None = None,
) -> dict[ItemKey, Prediction]:
    """Map item keys to their prediction lines; a prediction that names no item is an error.

    `resolve` lets a task recognise predictions keyed another way (TextVQA: LLaVA's image id + prompt).
    """
    known = {item.key for item in items}
    matched: dict[ItemKey, Prediction] = {}
    for pred in predictions:
        # ids are checked for repeats only after resolving, since LLaVA's TextVQA ids repeat by design
        key = pred.key if pred.key in known else (resolve(pred) if resolve else None)
        if key is None or key not in known:
            raise data_error(
                path, pred.line, f"question_id {pred.question_id!r} round {pred.round_id} is not a {benchmark} question"
            )
        if key in matched:
            raise data_error(
                path, pred.line,
                f"question_id {pred.question_id!r} round {pred.round_id} repeats line {matched[key].line}",
            )  # fmt: skip
        matched[key] = pred
    return matched


def match_predictions(
    items: Sequence[EvalItem],
    predictions: Sequence[Prediction],
    path: str | Path,
    benchmark: str,
    resolve: Resolver | None = None,
) -> dict[ItemKey, str]:
    """Map item keys to predicted texts (see `match_lines`)."""
    return {key: pred.text for key, pred in match_lines(items, predictions, path, benchmark, resolve).items()}


def prediction_record(item: EvalItem, text: str, **extra) -> dict:
    """The answer-file line for `item` (what a generation loop writes)."""
    record = {"question_id": item.question_id, "text": text}
    if item.round_id:
        record["round_id"] = item.round_id
    record.update(extra)
    return record


def write_predictions(path: str | Path, pairs: Iterable[tuple[EvalItem, str]]) -> None:
    write_jsonl(Path(path), [prediction_record(item, text) for item, text in pairs])
