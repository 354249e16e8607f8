"""Answer parsers and aggregate metrics for POPE, ScienceQA, MME, MMBench, GQA, TextVQA (SPEC §10.3-§10.8)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from visualrwkv.eval.items import EvalItem
from visualrwkv.eval.metrics import binary_metrics, circular_accuracy, mme_subtask
from visualrwkv.eval.parsers import extract_option, mme_answer, pope_answer, scienceqa_choice_index, scienceqa_letter
from visualrwkv.eval.tasks import gqa, pope, textvqa


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No.", "no"),  # the quirks SPEC §10.4 names
        ("NO", "yes"),
        ("Nope", "yes"),
        ("Yes", "yes"),
        ("No, there is no dog.", "no"),
        ("There is not a dog", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("There is a dog, no doubt", "no"),
        ("no\nreally", "yes"),  # split on single spaces only
        ("", "yes"),
    ],
)
def test_pope_parser(text, expected):
    assert pope_answer(text) == expected


def test_binary_metrics_by_hand():
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    preds = ["yes", "no", "yes", "yes", "no", "no", "yes", "no"]
    m = binary_metrics(preds, labels)
    assert (m.tp, m.fn, m.fp, m.tn) == (3, 1, 1, 3)
    assert (m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio) == (0.75, 0.75, 0.75, 0.75, 0.5)
    m = binary_metrics(["yes", "yes", "yes", "no"], ["yes", "yes", "no", "no"])
    assert m.precision == pytest.approx(2 / 3) and m.recall == 1.0
    assert m.f1 == pytest.approx(0.8) and m.yes_ratio == 0.75 and m.accuracy == 0.75
    # nothing predicted yes: precision and F1 are 0 instead of a division by zero
    m = binary_metrics(["no", "no"], ["yes", "no"])
    assert (m.precision, m.recall, m.f1, m.yes_ratio) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        binary_metrics(["maybe"], ["yes"])


def test_pope_score_is_mean_f1_over_splits():
    def items(split, labels):
        return [EvalItem(f"{split}{k}", "q", None, meta={"split": split, "label": lab}) for k, lab in enumerate(labels)]

    adversarial = items("adversarial", ["yes", "yes", "no", "no"])  # F1 0.8 (hand-checked above)
    popular = items("popular", ["yes", "no"])  # all right: F1 1
    random_ = items("random", ["yes", "no"])  # all wrong: F1 0
    answers = {i.key: a for i, a in zip(adversarial, ["Yes", "Yes", "Yes", "No"])}
    answers.update({i.key: a for i, a in zip(popular, ["Yes", "No."])})
    answers.update({i.key: a for i, a in zip(random_, ["No", "Yes"])})
    scored = pope.TASK.score(adversarial + popular + random_, answers, "llava")
    assert scored.score == pytest.approx((80 + 100 + 0) / 3)
    assert scored.breakdown["adversarial"]["precision"] == pytest.approx(200 / 3)
    assert scored.breakdown["popular"]["yes_ratio"] == 50.0


@pytest.mark.parametrize(
    "text, letter",
    [
        ("A", "A"),  # rule a
        ("E", "E"),
        ("B. because it is", "B"),  # rule b
        ("B. ", "B"),
        ("B.", "FAILED"),  # too short for rule b, no sentence
        ("A) red", "FAILED"),
        ("The answer is C.", "C"),  # rule c
        ("So. The answer is CX", "C"),  # the regex's final "." matches any character
        ("The answer is C. The answer is A.", "FAILED"),  # two matches
        ("The answer is c.", "FAILED"),
        ("b", "FAILED"),
        ("", "FAILED"),
    ],
)
def test_scienceqa_letter(text, letter):
    assert scienceqa_letter(text) == letter


def test_scienceqa_letter_must_index_a_choice():
    assert scienceqa_choice_index("B", 3) == 1
    assert scienceqa_choice_index("D", 3) == -1
    assert scienceqa_choice_index(scienceqa_letter("The answer is F."), 5) == -1
    assert scienceqa_choice_index("FAILED", 5) == -1


@pytest.mark.parametrize(
    "text, label",
    [
        ("Yes", "yes"), (" YES. ", "yes"), ("No.", "no"), ("y", "yes"), ("N", "no"), ("x", "other"),
        ("Yes, there is", "yes"), ("nope", "no"), ("Not sure", "no"), ("none", "no"),
        ("There is no dog", "other"), ("I don't know", "other"), ("", "other"),
        ("I know", "other"), ("The answer is yes", "other"),  # only the first 4 characters are searched
    ],
)  # fmt: skip
def test_mme_parser(text, label):
    assert mme_answer(text) == label


def test_mme_acc_and_acc_plus_spec_case():
    one_wrong = mme_subtask([("img", True), ("img", False)])
    assert (one_wrong.acc, one_wrong.acc_plus, one_wrong.score) == (50.0, 0.0, 50.0)
    both = mme_subtask([("img", True), ("img", True)])
    assert (both.acc, both.acc_plus, both.score) == (100.0, 100.0, 200.0)
    mixed = mme_subtask([("a", True), ("a", True), ("b", True), ("b", False)])
    assert (mixed.acc, mixed.acc_plus, mixed.n_images) == (75.0, 50.0, 2)


OPTIONS = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"), ("(B) blue", "B"), ("B.", "B"), ("**C**", "C"), ("The answer is A", "A"), ("blue", "B"),
        ("It is Blue.", "B"), ("blue or green", None), ("A or B", None), ("I don't know", None), ("D", None),
        ("B, B", "B"),
    ],
)  # fmt: skip
def test_extract_option(text, expected):
    assert extract_option(text, OPTIONS) == expected


OPTIONS4 = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


# VLMEvalKit can_infer (commit e8e78f0), worked out from its rules
@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("Cannot determine the answer", OPTIONS, "Z"),  # a refusal phrase
        ("I can't process this file. B", OPTIONS, "Z"),  # refusals win over letters
        ("I'm sorry, but without the image provided I would say A", OPTIONS, "Z"),
        ("Z", OPTIONS, "Z"), ("Z.", OPTIONS, "Z"), ("blue Z", OPTIONS, "Z"),  # a bare Z and no option letter
        ("Failed to obtain answer via API: B", OPTIONS4, None),  # skips the letter rules; too long for the texts
        ("Failed to obtain answer via API red", {"A": "red", "B": "blue", "C": "a much longer option"}, "A"),
        ("the sky is B", OPTIONS, "B"),  # the letter among the last four words
        ("B is the colour of the sky today", OPTIONS, None),  # ... not here, and the answer is too long for texts
        ("The answer is determined by the light", OPTIONS4, "D"),  # "answer is X" ignores case: the d of determined
        ("The correct answer is **C**. Here's why: A and B are wrong", OPTIONS, "C"),
        ("the answer is b", OPTIONS, "B"),
        ("A B", OPTIONS, None),
    ],
)  # fmt: skip
def test_extract_option_vlmevalkit_rules(text, options, expected):
    assert extract_option(text, options) == expected


_option_texts = st.dictionaries(st.sampled_from("ABCD"), st.text("abc xyz.", min_size=1, max_size=8), min_size=2)


@given(_option_texts, st.text("ABCDZ abcxyz.()*:", max_size=30))
def test_extract_option_names_an_option_or_nothing(options, text):
    assert extract_option(text, options) in (*options, "Z", None)


@given(_option_texts, st.data())
def test_a_bare_or_decorated_letter_is_that_option(options, data):
    letter = data.draw(st.sampled_from(sorted(options)))
    decorated = data.draw(st.sampled_from(["{}", "({})", "{}.", "**{}**", "[{}]", "Answer: {}"]))
    assert extract_option(decorated.format(letter), options) == letter


def test_circular_accuracy():
    assert circular_accuracy({"1": [True, True, True], "2": [True, False], "3": [True]}) == pytest.approx(200 / 3)
    assert circular_accuracy({"1": []}) == 0.0  # no rotation answered is not a pass
    with pytest.raises(ValueError):
        circular_accuracy({})


def test_gqa_normalize():
    assert gqa.normalize("Yes.") == "yes"
    assert gqa.normalize("Table...") == "table"
    assert gqa.normalize(" yes") == " yes"  # no strip: answer files hold stripped text already


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("User: <image>\nwhat is it?\nReference OCR token: a, b\nAnswer the question using a single word or phrase."
         "\n\nAssistant:", "what is it?"),
        ("User: what is it?\nAnswer the question using a single word or phrase.\n<image>\n\nAssistant:", "what is it?"),
        ("User: what is it?\nReference OCR token: a\n<image>\nwhat is it?\nReference OCR token: a\n"
         "Answer the question using a single word or phrase.\n\nAssistant:", "what is it?"),
        ("what is it?\nReference OCR token: a, b\nAnswer the question using a single word or phrase.", "what is it?"),
        ("Reference OCR token: a, b\nwhat is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("what is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("what is it?", None),
    ],
)  # fmt: skip
def test_textvqa_question_recovery(prompt, question):
    assert textvqa.recover_question(prompt) == question
