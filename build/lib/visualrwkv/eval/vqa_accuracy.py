"""The VQA soft accuracy with 10 human answers (VQAv2, TextVQA)."""

from __future__ import annotations

from typing import Sequence

from visualrwkv.eval.normalize import evalai_answer, official_answer, whitespace

VQA_VARIANTS = ("official", "evalai")
VQA_SCORERS = {
    "official": "GT-Vision-Lab/VQA vqaEval.py (HEAD a013f00): both sides normalised only when the GT answers "
                "differ, 10-choose-9 mean",
    "evalai": "EvalAI/MMF answer processor on prediction and every GT answer, 10-choose-9 mean",
}  # fmt: skip


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the GT answers of min(1, matches among the *other* answers / 3).

    With 10 answers of which n equal the prediction this is 0, 0.3, 0.6, 0.9, 1.0 for n = 0, 1, 2, 3, >=4.
    Each GT answer leaves out exactly itself (vqaEval.py compares the answer records, which differ by
    `answer_id`; MMF compares (index, answer) pairs), so repeated answers are not left out together.
    """
    if not answers:
        raise ValueError("leave_one_out_accuracy needs at least one ground-truth answer")
    matches = sum(a == prediction for a in answers)
    total = sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers)
    return total / len(answers)


def official_vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """vqaEval.py `evaluate` for one question, as at HEAD."""
    # the whitespace step always runs, on the prediction and on every GT answer
    prediction, gt = whitespace(prediction), [whitespace(a) for a in answers]
    # Quirk: when the (whitespace-cleaned) GT answers are all identical, neither side is normalised further, so
    # "Yes" or "yes." against ten "yes" scores 0.
    if len(set(gt)) > 1:
        prediction, gt = official_answer(prediction), [official_answer(a) for a in gt]
    return leave_one_out_accuracy(prediction, gt)


def vqa_accuracy(prediction: str, answers: Sequence[str], variant: str = "official") -> float:
    """Soft accuracy of one raw prediction against the raw GT answers, normalised the `variant` way."""
    if variant == "official":
        return official_vqa_accuracy(prediction, answers)
    if variant == "evalai":
        return leave_one_out_accuracy(evalai_answer(prediction), [evalai_answer(a) for a in answers])
    raise ValueError(f"unknown VQA scorer variant {variant!r}; choose one of {', '.join(VQA_VARIANTS)}")
