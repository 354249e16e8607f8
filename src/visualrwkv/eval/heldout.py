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
            lines.append(f"| {kind} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['total']} |")
        lines.append(f"| **all** | **{100 * self.accuracy:.1f}%** | {sum(r['correct'] for r in self.per_type.values())}"
                     f" / {self.total} |")
        return "\n".join(lines)


def normalise(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


def evaluate_heldout(model, data: str | Path, image_root: str | Path | None = None, limit: int | None = None,
                     progress: bool = False, batch_size: int = 32) -> HeldoutResult:
    """Greedy answers (at most 16 tokens, up to the first blank line) through the batching engine,
    whose rows are computed exactly as alone, so the score does not depend on `batch_size`."""
    from ..engine.engine import Engine, ImageInput
    from ..engine.sampling import SamplingParams

    data = Path(data)
    try:
        rows = json.loads(data.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{data}: invalid JSON ({e})") from e
    image_root = Path(image_root) if image_root else data.parent
    rows = rows[:limit] if limit else rows
    for i, row in enumerate(rows):
        turns = row.get("conversations") or []
        if len(turns) != 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            raise ValueError(f"{data}[{i}] (id {row.get('id')!r}): expected one human turn and one gpt turn")
    params = SamplingParams(temperature=0.0, top_p=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=16)
    correct, total, wrong = Counter(), Counter(), []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="held-out", dynamic_ncols=True)
    with Engine(model, max_batch_size=batch_size) as engine:
        window = 2 * batch_size  # keeps the decode batch full without queueing the whole file
        for start in range(0, len(rows), window):
            chunk = rows[start:start + window]
            handles = []
            for row in chunk:
                image = ImageInput.from_path(image_root / row["image"]) if row.get("image") else None
                handles.append(engine.submit(engine.build_prompt(row["conversations"][0]["value"], image), params))
            for row, handle in zip(chunk, handles):
                answer = handle.result().text.split("\n\n")[0].strip()
                expected = row["conversations"][1]["value"]
                kind = row.get("question_type", "all")
                total[kind] += 1
                if normalise(answer) == normalise(expected):
                    correct[kind] += 1
                elif len(wrong) < 10:
                    wrong.append({"id": row.get("id"), "question": row["conversations"][0]["value"],
                                  "expected": expected, "answer": answer})
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    per_type = {k: {"accuracy": correct[k] / total[k], "correct": correct[k], "total": total[k]} for k in total}
    n = sum(total.values())
    return HeldoutResult(sum(correct.values()) / max(1, n), n, per_type, wrong)
