"""Results as a markdown table (for people) and JSON (for tools)."""

from __future__ import annotations

import json
from typing import Sequence

from visualrwkv.eval.items import EvalResult


def _cell(value: object) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(results: Sequence[EvalResult], details: bool = True) -> str:
    """One summary row per result; with `details`, each result's breakdown tables, extras and notes."""
    lines = _table(
        ("task", "split", "score", "metric", "variant", "questions", "missing"),
        [(r.task, r.split, r.score, r.metric, r.variant, r.n_questions, r.n_missing) for r in results],
    )
    if not details:
        return "\n".join(lines) + "\n"
    for r in results:
        lines += ["", f"### {r.task} ({r.split})", "", f"Scorer: {r.scorer}."]
        for note in r.notes:
            lines.append(f"Note: {note}.")
        if r.extra:
            lines += [""] + _table(("extra", "value"), sorted(r.extra.items()))
        # breakdowns over the same categories share one table, one column each (MME acc / acc+, POPE splits)
        by_rows: dict[tuple[str, ...], list[str]] = {}
        for group, values in r.breakdown.items():
            if values:
                by_rows.setdefault(tuple(values), []).append(group)
        for rows, groups in by_rows.items():
            body = [(row, *(r.breakdown[g][row] for g in groups)) for row in rows]
            lines += [""] + _table(("", *groups), body)
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[EvalResult]) -> str:
    return json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2) + "\n"
