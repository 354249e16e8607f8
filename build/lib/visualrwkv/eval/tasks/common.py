"""Pieces several benchmark modules share: the LLaVA question JSONL, prompt assembly, per-category means."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from visualrwkv.eval.files import field_of, image_file, iter_jsonl
from visualrwkv.eval.items import IMAGE_TOKEN, SHORT_ANSWER, data_error


@dataclass(frozen=True)
class QuestionLine:
    """One line of a LLaVA question file: `{"question_id", "image", "text", ...}`."""

    line: int
    question_id: str | int
    image: Path | tuple[Path, ...]  # a tuple where the line lists several images (`"image": [a, b]`)
    text: str
    raw: dict


def read_question_jsonl(path: Path, image_root: Path, what: str, unique_ids: bool = True,
                        image_lists: bool = False) -> list[QuestionLine]:
    """Every line, validated: the fields present, the id unique (unless told otherwise), the image on disk.
    `image_lists`: an `image` may also be a list of paths (several images per question, in order)."""
    out: list[QuestionLine] = []
    seen: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path, what):
        qid = field_of(obj, "question_id", (str, int), path, line_no)
        if unique_ids and str(qid) in seen:
            raise data_error(path, line_no, f"question_id {qid!r} repeats line {seen[str(qid)]}")
        seen[str(qid)] = line_no
        names = obj.get("image")
        if image_lists and isinstance(names, list) and names:
            if not all(isinstance(name, str) for name in names):
                raise data_error(path, line_no, f"'image' must be a path or a list of paths, got {names!r}")
            image = tuple(image_file(image_root, name, path, line_no) for name in names)
        else:
            image = image_file(image_root, field_of(obj, "image", str, path, line_no), path, line_no)
        text = field_of(obj, "text", str, path, line_no)
        if not text.strip():
            raise data_error(path, line_no, "empty question text")
        out.append(QuestionLine(line=line_no, question_id=qid, image=image, text=text, raw=obj))
    if not out:
        raise data_error(path, None, f"{what} has no questions")
    return out


def with_image(text: str, image=None) -> str:
    """The human turn of an image question before the image-position transform (SPEC §7.3): one tag
    line per image (`image` a tuple of several; else one)."""
    return f"{IMAGE_TOKEN}\n" * (len(image) if isinstance(image, tuple) else 1) + text


def short_answer(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def group_percent(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{category: 100 * mean(value)} over (category, value) pairs, categories sorted."""
    groups: dict[str, list[float]] = defaultdict(list)
    for category, value in pairs:
        groups[category].append(value)
    return {c: percent(groups[c]) for c in sorted(groups)}
