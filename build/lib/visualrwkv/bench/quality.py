"""What a reduced precision costs a trained model: the shipped tiny VisualRWKV on held-out questions.

For each precision (rwkv/precision.py) against fp32, teacher-forced on the held-out answers (the gpt
turns' supervised tokens, images spliced in as in training): the perplexity and its change, the max
and mean |Δlogit| over those positions, and how often the greedy token agrees with fp32's. Random
weights (bench/lm.py's accuracy check) say how far logits move; this says whether the move matters.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..constants import IGNORE_INDEX


@dataclass
class QualityRow:
    precision: str
    questions: int
    answer_tokens: int
    perplexity: float
    perplexity_delta: float  # against fp32 (0 for fp32)
    max_abs_diff: float  # |Δlogit| over the answer positions, against fp32
    mean_abs_diff: float
    greedy_agreement: float  # fraction of the answer positions whose argmax is fp32's


def _samples(model, data: Path, limit: int | None):
    from ..prompts import tokenize_conversation

    rows = json.loads(data.read_text())[:limit]
    if not rows:
        raise ValueError(f"{data}: no rows")
    for i, row in enumerate(rows):
        images = [row["image"]] if row.get("image") else []
        sample = tokenize_conversation(row["conversations"], model.tokenizer, model.config.image_position,
                                       num_images=len(images), prompt_format=model.config.prompt_format)
        pixels = model.preprocess([Image.open(data.parent / p).convert("RGB") for p in images]) if images else \
            torch.zeros(0)
        yield sample.input_ids, pixels, sample.labels


@torch.no_grad()
def heldout_quality(model, data: str | Path, precisions: list[str], limit: int | None = 200) -> list[QualityRow]:
    """`model` (a float VisualRWKV, left unchanged) in fp32 and in each of `precisions` on the first
    `limit` rows of the LLaVA-format QA file `data` (image paths relative to it)."""
    data = Path(data)
    models = {"float32": copy.deepcopy(model).set_precision("float32").eval()}
    for p in precisions:
        models.setdefault(p, copy.deepcopy(model).set_precision(p).eval())
    nll = {p: 0.0 for p in models}
    worst = {p: 0.0 for p in models}
    total_diff = {p: 0.0 for p in models}
    agree = {p: 0 for p in models}
    tokens = questions = 0
    for ids, pixels, labels in _samples(model, data, limit):
        outputs = {}
        for p, m in models.items():
            logits, target = m.forward([ids], [pixels] if len(pixels) else [torch.zeros(0)], [labels])
            logits, target = logits[0, :-1].float(), target[0, 1:]
            keep = target != IGNORE_INDEX
            outputs[p] = (logits[keep], target[keep])
        reference, target = outputs["float32"]
        tokens, questions = tokens + len(target), questions + 1
        for p, (logits, _) in outputs.items():
            nll[p] += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            diff = (logits - reference).abs()
            worst[p] = max(worst[p], diff.max().item())
            total_diff[p] += diff.mean(-1).sum().item()
            agree[p] += int((logits.argmax(-1) == reference.argmax(-1)).sum())
    ppl = {p: math.exp(nll[p] / tokens) for p in models}
    return [QualityRow(p, questions, tokens, ppl[p], ppl[p] - ppl["float32"], worst[p], total_diff[p] / tokens,
                       agree[p] / tokens) for p in models]


def quality_table(rows: list[QualityRow]) -> str:
    lines = ["| precision | questions | answer tokens | perplexity | Δ perplexity | max \\|Δlogit\\| | mean \\|Δlogit\\| | "
             "greedy agreement |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.precision} | {r.questions} | {r.answer_tokens} | {r.perplexity:.4f} | "
                     f"{r.perplexity_delta:+.4f} | {r.max_abs_diff:.3g} | {r.mean_abs_diff:.3g} | "
                     f"{100 * r.greedy_agreement:.2f}% |")
    return "\n".join(lines)
