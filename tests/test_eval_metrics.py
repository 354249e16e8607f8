"""eval/metrics.py on hand-counted cases: every rate an exact fraction, the zero-denominator fallbacks, and the MME
subtask names spelled out from SPEC §10.7 (not read back from the module)."""

import dataclasses

import pytest

from visualrwkv.eval.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    BinaryMetrics,
    binary_metrics,
    circular_accuracy,
    mme_subtask,
)


def test_mme_subtask_names_are_the_fourteen_of_the_benchmark():
    assert MME_PERCEPTION == (
        "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    )  # fmt: skip
    assert MME_COGNITION == ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def test_binary_metrics_counts_each_outcome_in_its_own_cell():
    # one tp, two fp, three tn, four fn: every cell a different number, so a swapped cell shows
    preds = ["yes"] + ["yes"] * 2 + ["no"] * 3 + ["no"] * 4
    labels = ["yes"] + ["no"] * 2 + ["no"] * 3 + ["yes"] * 4
    m = binary_metrics(preds, labels)
    assert (m.tp, m.fp, m.tn, m.fn, m.n) == (1, 2, 3, 4, 10)
    assert m.accuracy == 0.4  # (1 + 3) / 10
    assert m.precision == 1 / 3  # 1 / (1 + 2)
    assert m.recall == 0.2  # 1 / (1 + 4)
    assert m.f1 == pytest.approx(2 * (1 / 3) * 0.2 / (1 / 3 + 0.2))  # = 0.25
    assert m.f1 == pytest.approx(0.25)
    assert m.yes_ratio == 0.3  # 3 of 10 predictions are "yes"


def test_rates_from_the_cells_directly():
    m = BinaryMetrics(tp=6, fp=2, tn=1, fn=3)
    assert m.n == 12
    assert m.accuracy == 7 / 12
    assert m.precision == 6 / 8
    assert m.recall == 6 / 9
    assert m.f1 == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert m.yes_ratio == 8 / 12


def test_no_yes_label_gives_zero_recall_not_a_division_by_zero():
    # every label "no", some predicted "yes": tp + fn = 0
    m = binary_metrics(["yes", "no", "no"], ["no", "no", "no"])
    assert (m.tp, m.fp, m.tn, m.fn) == (0, 1, 2, 0)
    assert m.recall == 0.0
    assert m.precision == 0.0
    assert m.f1 == 0.0
    assert m.yes_ratio == 1 / 3
    assert m.accuracy == 2 / 3


def test_empty_input_gives_zero_rates():
    m = binary_metrics([], [])
    assert (m.tp, m.fp, m.tn, m.fn, m.n) == (0, 0, 0, 0, 0)
    assert (m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_all_right_gives_ones():
    m = binary_metrics(["yes", "no"], ["yes", "no"])
    assert (m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio) == (1.0, 1.0, 1.0, 1.0, 0.5)


@pytest.mark.parametrize(
    "pred, label", [("maybe", "yes"), ("yes", "maybe"), ("Yes", "yes"), ("no", "No"), ("", "no")]
)
def test_binary_metrics_takes_only_lowercase_yes_and_no(pred, label):
    with pytest.raises(ValueError, match="binary_metrics takes 'yes'/'no'"):
        binary_metrics(["yes", pred], ["yes", label])


def test_binary_metrics_needs_paired_lists():
    with pytest.raises(ValueError):
        binary_metrics(["yes", "no"], ["yes"])


def test_metric_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BinaryMetrics(1, 0, 0, 0).tp = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        mme_subtask([("a", True)]).acc = 0.0


def test_mme_subtask_exact_values():
    # 3 images, 6 questions: img a both right, b one right, c both wrong -> acc 50, acc+ 100/3
    s = mme_subtask([("a", True), ("a", True), ("b", True), ("b", False), ("c", False), ("c", False)])
    assert s.acc == 50.0
    assert s.acc_plus == 100.0 / 3
    assert s.score == 50.0 + 100.0 / 3
    assert (s.n_questions, s.n_images) == (6, 3)
    # 4 questions over 2 images, 3 right: 75 and 50
    s = mme_subtask([("x", True), ("y", True), ("x", True), ("y", False)])
    assert (s.acc, s.acc_plus, s.score, s.n_questions, s.n_images) == (75.0, 50.0, 125.0, 4, 2)
    with pytest.raises(ValueError, match="at least one question"):
        mme_subtask([])


def test_circular_accuracy_exact_values():
    assert circular_accuracy({"1": [True, True], "2": [False, True], "3": [True], "4": [True, True, True]}) == 75.0
    assert circular_accuracy({"1": [False]}) == 0.0
    assert circular_accuracy({"1": [True]}) == 100.0
    assert circular_accuracy({"1": [], "2": [True]}) == 50.0
    with pytest.raises(ValueError, match="at least one question"):
        circular_accuracy({})


def test_equal_cells_do_not_look_like_empty_ones():
    # tp == fp == fn: the denominators tp + fp and tp + fn are 4, not 0, and precision == recall
    m = BinaryMetrics(tp=2, fp=2, tn=1, fn=2)
    assert (m.precision, m.recall, m.f1) == (0.5, 0.5, 0.5)
    assert m.accuracy == 3 / 7 and m.yes_ratio == 4 / 7
