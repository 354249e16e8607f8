"""Exact-match accuracy on single-turn LLaVA-format QA files, per `question_type` (e.g. the
held-out split of the synthetic shapes data, which is how the shipped tiny model is judged)."""

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

    def markdown(self) -> str:
        lines = ["| question type | accuracy | correct / total |", "|---|---|---|"]
        for kind, r in sorted(self.per_type.items()):
            if kind == "all":  # rows without a question_type: the total row below is theirs
                continue
            lines.append(f"| {kind} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['total']} |")
        lines.append(f"| **all** | **{100 * self.accuracy:.1f}%** | {sum(r['correct'] for r in self.per_type.values())}"
                     f" / {self.total} |")
        return "\n".join(lines)


def normalise(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


def evaluate_heldout(model, data: str | Path, image_root: str | Path | None = None, limit: int | None = None,
                     progress: bool = False) -> HeldoutResult:

    data = Path(data)
    try:
        rows = json.loads(data.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{data}: invalid JSON ({e})") from e
    image_root = Path(image_root) if image_root else data.parent
    rows = rows[:limit] if limit else rows
    correct, total, wrong = Counter(), Counter(), []
    iterator = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="held-out", dynamic_ncols=True)
    for i, row in enumerate(iterator):
        turns = row.get("conversations") or []
        if len(turns) != 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            raise ValueError(f"{data}[{i}] (id {row.get('id')!r}): expected one human turn and one gpt turn")
        names = row.get("image") or []
        images = [image_root / name for name in ([names] if isinstance(names, str) else names)]
        try:
            ids = model.prompt_ids(turns[0]["value"], len(images))  # the model's format and image limit
        except ValueError as e:
            raise ValueError(f"{data}[{i}] (id {row.get('id')!r}): {e}") from None
        answer = model.tokenizer.decode(model.generate_greedy(ids, images, max_new_tokens=16))
        answer = answer.split("\n\n")[0].strip()
        kind = row.get("question_type", "all")
        total[kind] += 1
        if normalise(answer) == normalise(turns[1]["value"]):
            correct[kind] += 1
        elif len(wrong) < 10:
            wrong.append({"id": row.get("id"), "question": turns[0]["value"], "expected": turns[1]["value"],
                          "answer": answer})
    per_type = {k: {"accuracy": correct[k] / total[k], "correct": correct[k], "total": total[k]} for k in total}
    n = sum(total.values())
    return HeldoutResult(sum(correct.values()) / max(1, n), n, per_type, wrong)
