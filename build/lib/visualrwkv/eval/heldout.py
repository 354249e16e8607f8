"""Exact-match accuracy on LLaVA-format QA files, per `question_type` and per turn (e.g. the held-out
splits of the synthetic shapes data, which is how the shipped tiny model is judged).

A row holds one question (one human and one gpt turn) or a conversation of several: each question is
then asked as a follow-up after the earlier ones, with the model's own earlier answers, rendered as
a live chat renders it (engine.inputs.build_chat_prompt); the row's `question_type` is one type, or a
list with one per question. `per_turn` gives the accuracy of first questions, second ones, ...
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HeldoutResult:
    accuracy: float
    total: int
    per_type: dict = field(default_factory=dict)  # type -> {"accuracy", "correct", "total"}
    examples: list = field(default_factory=list)  # a few wrong answers, for reading
    per_turn: dict = field(default_factory=dict)  # "1", "2", ... -> {"accuracy", "correct", "total"}

    def markdown(self) -> str:
        lines = ["| question type | accuracy | correct / total |", "|---|---|---|"]
        for kind, r in sorted(self.per_type.items()):
            if kind == "all":  # rows without a question_type: the total row below is theirs
                continue
            lines.append(f"| {kind} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['total']} |")
        if len(self.per_turn) > 1:
            for turn, r in sorted(self.per_turn.items(), key=lambda item: int(item[0])):
                lines.append(f"| turn {turn} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['total']} |")
        lines.append(f"| **all** | **{100 * self.accuracy:.1f}%** | {sum(r['correct'] for r in self.per_type.values())}"
                     f" / {self.total} |")
        return "\n".join(lines)


def normalise(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


def _questions(row, where: str) -> list[tuple[str, str, str]]:
    """(question, expected answer, question type) per human/gpt pair of a row, in order."""
    turns = row.get("conversations") or []
    if len(turns) < 2 or len(turns) % 2:
        raise ValueError(f"{where}: expected human and gpt turns in pairs, got {len(turns)} turn(s)")
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") != ("human", "gpt")[k % 2] \
                or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {k} must be a {('human', 'gpt')[k % 2]} turn with a string value")
    kinds = row.get("question_type", "all")
    kinds = kinds if isinstance(kinds, list) else [kinds] * (len(turns) // 2)
    if len(kinds) != len(turns) // 2 or not all(isinstance(k, str) for k in kinds):
        raise ValueError(f"{where}: question_type must be a string or a list of {len(turns) // 2} strings")
    return [(turns[k]["value"], turns[k + 1]["value"], kinds[k // 2]) for k in range(0, len(turns), 2)]


def evaluate_heldout(model, data: str | Path, image_root: str | Path | None = None, limit: int | None = None,
                     progress: bool = False) -> HeldoutResult:
    from visualrwkv.engine.inputs import ImageInput, build_chat_prompt

    data = Path(data)
    try:
        rows = json.loads(data.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{data}: invalid JSON ({e})") from e
    image_root = Path(image_root) if image_root else data.parent
    rows = rows[:limit] if limit else rows
    correct, total, wrong = Counter(), Counter(), []
    turn_correct, turn_total = Counter(), Counter()
    iterator = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="held-out", dynamic_ncols=True)
    cfg = model.config
    for i, row in enumerate(iterator):
        where = f"{data}[{i}] (id {row.get('id')!r})"
        questions = _questions(row, where)
        names = row.get("image") or []
        try:
            images = [ImageInput.from_path(image_root / name) for name in ([names] if isinstance(names, str) else names)]
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        history: list[tuple[str, str]] = []
        for turn, (question, expected, kind) in enumerate(questions, start=1):
            try:
                prompt = build_chat_prompt(question, history, images, tokenizer=model.tokenizer,
                                           image_position=cfg.image_position, prompt_format=cfg.prompt_format,
                                           max_images=model.max_images,
                                           image_every_turn=cfg.image_every_turn)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            answer = model.tokenizer.decode(model.generate_greedy(prompt.ids, [im.image for im in prompt.images],
                                                                  max_new_tokens=16))
            answer = answer.split("\n\n")[0].strip()
            right = normalise(answer) == normalise(expected)
            total[kind] += 1
            turn_total[str(turn)] += 1
            correct[kind] += right
            turn_correct[str(turn)] += right
            if not right and len(wrong) < 10:
                wrong.append({"id": row.get("id"), "turn": turn, "question": question, "expected": expected,
                              "answer": answer})
            history.append((question, answer or "(no answer)"))

    def table(c: Counter, t: Counter) -> dict:
        return {k: {"accuracy": c[k] / t[k], "correct": c[k], "total": t[k]} for k in t}

    n = sum(total.values())
    return HeldoutResult(sum(correct.values()) / max(1, n), n, table(correct, total), wrong,
                         table(turn_correct, turn_total))
