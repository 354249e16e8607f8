"""The values every benchmark shares: one prompt to answer (`EvalItem`), one scored run (`EvalResult`),
and the error raised for a malformed benchmark or predictions file (`EvalDataError`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

# Prompt suffixes of the LLaVA-1.5 evaluation bundle (SPEC §10.1).
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
LETTER_ANSWER_CN = "请直接回答选项字母。"
IMAGE_TOKEN = "<image>"

# How a prediction is looked up: (str(question_id), round_id). Ids are compared as strings so that 5 and "5"
# (JSON int vs str, both seen in LLaVA answer files) name the same question.
ItemKey = tuple[str, int]


class EvalDataError(ValueError):
    """A benchmark or predictions file is malformed; the message names the file, the line/row and the problem."""


def data_error(path: str | Path, where: int | str | None, problem: str) -> EvalDataError:
    """Build an `EvalDataError` whose message starts `file:line:` (or `file:` when no line applies)."""
    loc = f"{path}" if where is None else f"{path}:{where}"
    return EvalDataError(f"{loc}: {problem}")


@dataclass(frozen=True)
class EvalItem:
    """One prompt for the model.

    `text` is the value of the human turn *before* the image-position transform (SPEC §7.3): `"<image>\\n"` +
    the question with the task's prompt suffix when the item has an image, the question alone otherwise.
    `image` is a file path, the encoded image bytes (MMBench's base64 column, decoded), a tuple of file paths
    (several images, in order; `text` then holds one tag line per image) or None.
    MMBench circular rotations are separate items that share `question_id` and differ in `round_id`.
    `meta` holds the ground truth and categories the scorer needs; generation code can ignore it.
    """

    question_id: str | int
    text: str
    image: Path | bytes | tuple[Path, ...] | None
    round_id: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> ItemKey:
        return (str(self.question_id), self.round_id)


@dataclass(frozen=True)
class Scored:
    """What a task scorer computes; the generic layer adds the bookkeeping to make an `EvalResult`."""

    score: float
    metric: str  # what `score` measures, e.g. "accuracy (%)"
    scorer: str  # one line naming the scorer and the reference implementation it reproduces
    n_questions: int  # scoring units (MMBench: questions, not rotations)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """One benchmark scored once. Numbers are unrounded; the renderers round to 2 decimals."""

    task: str
    split: str
    variant: str
    scorer: str
    metric: str
    score: float
    n_items: int  # prompts (MMBench: every rotation)
    n_questions: int
    n_missing: int  # prompts without a prediction; they are scored as wrong
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d
