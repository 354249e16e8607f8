"""The VQA soft accuracy with 10 human answers (VQAv2 SPEC §10.2, TextVQA SPEC §10.3)."""

from __future__ import annotations

from typing import Sequence

from visualrwkv.eval.normalize import evalai_answer, official_prediction, official_punctuation

VQA_VARIANTS = ("official", "evalai")
VQA_SCORERS = {
    "official": "GT-Vision-Lab vqaEval.py normaliser (GT punctuation only when the answers differ), 10-choose-9 mean",
    "evalai": "EvalAI/MMF answer processor on prediction and every GT answer, 10-choose-9 mean",
}


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the GT answers of min(1, matches among the *other* answers / 3).

    With 10 answers of which n equal the prediction this is 0, 0.3, 0.6, 0.9, 1.0 for n = 0, 1, 2, 3, >=4.
    """
    if not answers:
        raise ValueError("leave_one_out_accuracy needs at least one ground-truth answer")
    matches = sum(a == prediction for a in answers)
    total = sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], variant: str = "official") -> float:
    """Soft accuracy of one raw prediction against the raw GT answers, normalised the `variant` way."""
    if variant == "official":
        # vqaEval.py tests the raw answers for identity, and touches them only when they differ
        gt = [official_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
        return leave_one_out_accuracy(official_prediction(prediction), gt)
    if variant == "evalai":
        return leave_one_out_accuracy(evalai_answer(prediction), [evalai_answer(a) for a in answers])
    raise ValueError(f"unknown VQA scorer variant {variant!r}; choose one of {', '.join(VQA_VARIANTS)}")
