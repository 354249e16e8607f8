"""The evaluation entry points: read a benchmark, score a predictions file, build an offline fixture."""

from __future__ import annotations

import dataclasses
import importlib
import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval.items import EvalDataError, EvalItem, EvalResult, ItemKey
from visualrwkv.eval.predictions import match_lines, read_predictions, write_predictions
from visualrwkv.eval.taskspec import TaskSpec

TASK_NAMES = ("vqav2", "gqa", "scienceqa", "textvqa", "pope", "mme", "mmbench", "seed")
ORACLE_PREDICTIONS = "oracle_predictions.jsonl"  # written by build_fixture beside the data


def get_task(name: str) -> TaskSpec:
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"visualrwkv.eval.tasks.{name}").TASK


def _choose(value: str | None, allowed: tuple[str, ...], what: str, task: str) -> str:
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} for {task}; choose one of {', '.join(allowed)}")
    return value


def _data_dir(data_dir: str | Path, spec: TaskSpec) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise EvalDataError(f"{path}: not a directory; {spec.title} expects: {spec.layout}")
    return path


def read_items(task: str, data_dir: str | Path, split: str | None = None, prompt: str | None = None) -> list[EvalItem]:
    """The prompts of one benchmark split, in a stable order (the order of the benchmark's files)."""
    spec = get_task(task)
    split = _choose(split, spec.splits, "split", task)
    prompt = _choose(prompt, spec.prompts, "prompt style", task)
    return spec.read(_data_dir(data_dir, spec), split, prompt)


def score_items(
    task: str,
    items: Sequence[EvalItem],
    answers: Mapping[ItemKey, str],
    variant: str | None = None,
    split: str | None = None,
    only_answered: bool = False,
    prompts: Mapping[ItemKey, str] | None = None,
) -> EvalResult:
    """Score answers already in memory (item key -> predicted text; `prompts`: the answer lines' prompt fields)."""
    spec = get_task(task)
    variant = _choose(variant, spec.variants, "scorer variant", task)
    split = _choose(split, spec.splits, "split", task)
    notes = []
    if only_answered:
        kept = [item for item in items if item.key in answers]
        notes.append(
            f"only_answered: scored the {len(kept)} of {len(items)} prompts that have a prediction; "
            "not comparable with published numbers"
        )
        items = kept
    if not items:
        raise EvalDataError(f"{task}: nothing to score")
    n_missing = sum(item.key not in answers for item in items)
    if n_missing:
        notes.append(f"{n_missing} of {len(items)} prompts have no prediction; they are scored as wrong")
    if spec.reads_prompts:
        scored = spec.score(items, answers, variant, prompts or {})
    else:
        scored = spec.score(items, answers, variant)
    return EvalResult(
        task=task,
        split=split,
        variant=variant,
        scorer=scored.scorer,
        metric=scored.metric,
        score=scored.score,
        n_items=len(items),
        n_questions=scored.n_questions,
        n_missing=n_missing,
        breakdown=scored.breakdown,
        extra=scored.extra,
        notes=tuple(notes),
    )


def score_predictions(
    task: str,
    data_dir: str | Path,
    predictions_jsonl: str | Path,
    variant: str | None = None,
    split: str | None = None,
    only_answered: bool = False,
) -> EvalResult:
    """Score a LLaVA-style answer file against a benchmark laid out under `data_dir`."""
    spec = get_task(task)
    split = _choose(split, spec.splits, "split", task)
    items = read_items(task, data_dir, split)
    resolve = spec.resolver(items) if spec.resolver else None
    label = f"{task} {split}"
    predictions = read_predictions(predictions_jsonl)
    n_unscored = 0
    if spec.unscored is not None:
        unscored = spec.unscored(_data_dir(data_dir, spec), split) - {item.key[0] for item in items}
        kept = [pred for pred in predictions if str(pred.question_id) not in unscored]
        n_unscored, predictions = len(predictions) - len(kept), kept
    lines = match_lines(items, predictions, predictions_jsonl, label, resolve)
    answers = {key: pred.text for key, pred in lines.items()}
    prompts = {key: pred.prompt for key, pred in lines.items() if pred.prompt is not None}
    result = score_items(task, items, answers, variant, split, only_answered, prompts)
    if n_unscored:
        note = f"skipped {n_unscored} predictions for {spec.unscored_what} (not scored)"
        extra = {**result.extra, "n_unscored": n_unscored}
        result = dataclasses.replace(result, notes=(*result.notes, note), extra=extra)
    return result


MULTI_IMAGE_FIXTURES = ("gqa",)  # tasks whose fixture can ask about several images per question


def build_fixture(task: str, out_dir: str | Path, n: int = 4, seed: int = 0, images: int = 1) -> Path:
    """Write a tiny dataset in `task`'s layout (drawn shapes) plus the answers of a perfect model.
    `images` > 1: that many images per question (`"image": [...]`; GQA only), for models that take several.

    Returns the path of those answers (`oracle_predictions.jsonl` in `out_dir`), for the default split.
    """
    if n < 1:
        raise ValueError(f"fixture size n must be >= 1, got {n}")
    if images < 1 or (images > 1 and task not in MULTI_IMAGE_FIXTURES):
        raise ValueError(f"images per question must be 1, or more for {', '.join(MULTI_IMAGE_FIXTURES)}; "
                         f"got {images} for {task}")
    spec = get_task(task)
    out = Path(out_dir)
    if images > 1:
        spec.write_fixture(out, n, random.Random(seed), images=images)
    else:
        spec.write_fixture(out, n, random.Random(seed))
    items = read_items(task, out)
    path = out / ORACLE_PREDICTIONS
    write_predictions(path, [(item, spec.reference_answer(item, True)) for item in items])
    return path
