"""Aggregating per-question outcomes into benchmark numbers (POPE SPEC §10.4, MME §10.7, MMBench §10.8)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass(frozen=True)
class BinaryMetrics:
    """Yes/no classification with "yes" as the positive class; all rates are fractions in [0, 1]."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        # LLaVA divides by zero here when nothing is predicted "yes"; 0 is the honest value for a report
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def yes_ratio(self) -> float:
        """The fraction of *predictions* that are "yes" (LLaVA), not of labels (lmms-eval's quirk)."""
        return (self.tp + self.fp) / self.n if self.n else 0.0


def binary_metrics(predictions: Iterable[str], labels: Iterable[str]) -> BinaryMetrics:
    """Count outcomes of paired "yes"/"no" predictions and labels."""
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        if pred not in ("yes", "no") or label not in ("yes", "no"):
            raise ValueError(f"binary_metrics takes 'yes'/'no', got prediction {pred!r}, label {label!r}")
        if pred == "yes":
            tp, fp = (tp + 1, fp) if label == "yes" else (tp, fp + 1)
        else:
            tn, fn = (tn + 1, fn) if label == "no" else (tn, fn + 1)
    return BinaryMetrics(tp=tp, fp=fp, tn=tn, fn=fn)


@dataclass(frozen=True)
class MMESubtask:
    acc: float  # % of questions answered correctly
    acc_plus: float  # % of images with every question answered correctly
    n_questions: int
    n_images: int

    @property
    def score(self) -> float:
        return self.acc + self.acc_plus


def mme_subtask(outcomes: Sequence[tuple[str, bool]]) -> MMESubtask:
    """`outcomes` = (image key, correct) per question of one subtask."""
    if not outcomes:
        raise ValueError("an MME subtask needs at least one question")
    per_image: dict[str, list[bool]] = defaultdict(list)
    for image, correct in outcomes:
        per_image[image].append(correct)
    acc = 100.0 * sum(c for _, c in outcomes) / len(outcomes)
    acc_plus = 100.0 * sum(all(v) for v in per_image.values()) / len(per_image)
    return MMESubtask(acc=acc, acc_plus=acc_plus, n_questions=len(outcomes), n_images=len(per_image))


def circular_accuracy(rounds: dict[str, list[bool]]) -> float:
    """CircularEval: the % of questions whose *every* rotation is correct (`rounds`: question -> outcomes)."""
    if not rounds:
        raise ValueError("circular_accuracy needs at least one question")
    return 100.0 * sum(bool(v) and all(v) for v in rounds.values()) / len(rounds)
