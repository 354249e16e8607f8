"""What each benchmark module provides (one `TaskSpec` per module in `visualrwkv.eval.tasks`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from visualrwkv.eval.items import EvalItem, Scored
from visualrwkv.eval.predictions import Resolver


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    layout: str  # the files expected under --data, for --help and errors
    splits: tuple[str, ...]  # the first is the default
    variants: tuple[str, ...]  # scorer variants; the first is the default
    # read(data_dir, split, prompt) -> items in a stable order
    read: Callable[[Path, str, str], list[EvalItem]]
    # score(items, answers by item key, variant[, prompts by item key when `reads_prompts`]); an item without an
    # answer is scored as wrong
    score: Callable[..., Scored]
    # write_fixture(out_dir, n, rng): a small dataset in this task's layout, every split
    write_fixture: Callable[[Path, int, random.Random], None]
    # reference_answer(item, correct): an answer a perfect (correct=True) or always-wrong model would give
    reference_answer: Callable[[EvalItem, bool], str]
    prompts: tuple[str, ...] = ("bundle",)  # prompt styles; the first is the default
    # resolver(items) -> a function that maps a prediction keyed another way to an item key
    resolver: Callable[[Sequence[EvalItem]], Resolver] | None = None
    # the scorer also gets the answer lines' "prompt" fields (ScienceQA: LLaVA reads "<image>" from them)
    reads_prompts: bool = False
    # unscored(data_dir, split) -> ids of questions in the benchmark's files that are not scored here (SEED's
    # video questions): an answer file may hold them; they are skipped and counted, not an error
    unscored: Callable[[Path, str], set[str]] | None = None
    unscored_what: str = ""  # what those questions are, for the note
