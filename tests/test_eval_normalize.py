"""VQA normalisers and the 10-answer soft accuracy, against SPEC §10.2's worked examples and edge cases."""

import pytest

from visualrwkv.eval.normalize import (
    EVALAI_CONTRACTIONS,
    OFFICIAL_CONTRACTIONS,
    evalai_answer,
    official_prediction,
    official_punctuation,
)
from visualrwkv.eval.vqa_accuracy import leave_one_out_accuracy, vqa_accuracy

# SPEC §10.2 item 7: raw -> (official, EvalAI)
WORKED_EXAMPLES = [
    ("Yes.", "yes", "yes"),
    ("Two", "2", "2"),
    ("A dog", "dog", "dog"),
    ("The red one.", "red 1", "red 1"),
    ("1.5", "1.5", "1.5"),
    ("3,000", "3000", "3000"),
    ("it's red", "it s red", "it 's red"),
    ("black-and-white", "black-and-white", "black and white"),
    ("Yes!", "yes!", "yes"),
    ("10:30", "10 30", "10:30"),
    ("up/down", "up down", "up down"),
    ("dont know", "don\u2019t know", "don't know"),
]


@pytest.mark.parametrize("raw, official, _", WORKED_EXAMPLES)
def test_official_worked_examples(raw, official, _):
    assert official_prediction(raw) == official


@pytest.mark.parametrize("raw, _, evalai", WORKED_EXAMPLES)
def test_evalai_worked_examples(raw, _, evalai):
    assert evalai_answer(raw) == evalai


def test_period_regex_typo_means_period_not_followed_by_a_digit():
    assert official_punctuation("yes.") == "yes"
    assert official_punctuation("3.14.") == "3.14"
    assert official_punctuation(".5 m") == ".5 m"  # followed by a digit: kept
    assert official_punctuation("5.") == "5"
    assert official_punctuation("u.s.a") == "usa"
    assert evalai_answer("e.g. 2.5.") == "eg 2.5"


def test_punctuation_decision_looks_at_the_whole_original_text():
    # "/ " occurs once, so *every* "/" is deleted, even the one between letters
    assert official_punctuation("x/y / z") == "xy  z"
    assert official_prediction("x/y / z") == "xy z"
    assert official_punctuation("x/y") == "x y"
    # ... the original text, not the text after earlier marks were handled: ";" -> " " makes " /", which is ignored
    assert official_punctuation("a;/b") == "a  b"
    # a digit-comma-digit anywhere deletes every listed mark instead of spacing it
    assert official_punctuation("1,000 cats/dogs") == "1000 catsdogs"
    assert official_punctuation("cats/dogs, 1") == "cats dogs 1"  # ", " deletes ","; "/" becomes a space


def test_official_apostrophe_is_punctuation_and_contractions_are_typographic():
    assert official_prediction("Isn't") == "isn t"
    assert official_prediction("isnt") == "isn\u2019t"
    assert official_prediction("weve") == "we've"  # one of the few ASCII entries of the official map
    assert OFFICIAL_CONTRACTIONS["dont"] == "don\u2019t"
    assert OFFICIAL_CONTRACTIONS["aint"] == "ain't"


def test_evalai_contractions_are_the_official_map_in_ascii():
    assert len(EVALAI_CONTRACTIONS) == len(OFFICIAL_CONTRACTIONS) == 120
    assert all("\u2019" not in k + v for k, v in EVALAI_CONTRACTIONS.items())
    assert evalai_answer("isnt") == "isn't"
    assert evalai_answer("What's that?") == "what 's that"


def test_numbers_articles_and_whitespace():
    assert official_prediction("none") == "0"
    assert official_prediction("an apple") == "apple"
    assert official_prediction("The") == ""
    assert official_prediction("Ten\tdogs\n") == "10 dogs"
    assert official_prediction("yes\nno") == "yes no"
    assert evalai_answer("  Three  Apples ") == "3 apples"


def test_evalai_hyphen_next_to_space_is_deleted():
    assert evalai_answer("well-known") == "well known"
    assert evalai_answer("- yes") == "yes"


@pytest.mark.parametrize("n, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_oracle_values(n, expected):
    answers = ["cat"] * n + ["dog"] * (10 - n)
    assert leave_one_out_accuracy("cat", answers) == pytest.approx(expected)
    for variant in ("official", "evalai"):
        assert vqa_accuracy("Cat.", answers, variant) == pytest.approx(expected)


def test_leave_one_out_is_the_mean_of_ten_choose_nine():
    # by hand: 2 matches; the 2 matching GTs each see 1 other match (1/3), the 8 others see 2 (2/3)
    assert leave_one_out_accuracy("a", ["a", "a"] + ["b"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    with pytest.raises(ValueError):
        leave_one_out_accuracy("a", [])


def test_official_gt_punctuation_only_when_answers_differ():
    # all identical: the raw "yes." is kept, so the normalised prediction "yes" matches none of them
    assert vqa_accuracy("yes", ["yes."] * 10, "official") == 0.0
    # not all identical: punctuation runs on the GT, "yes." becomes "yes"
    assert vqa_accuracy("yes", ["yes."] * 9 + ["yes"], "official") == 1.0
    # the GT is never lowercased by the official scorer
    assert vqa_accuracy("red", ["Red"] * 9 + ["blue"], "official") == 0.0
    # EvalAI normalises every GT answer
    assert vqa_accuracy("yes", ["yes."] * 10, "evalai") == 1.0
    assert vqa_accuracy("red", ["Red"] * 9 + ["blue"], "evalai") == 1.0


def test_variants_differ_where_the_spec_says():
    assert vqa_accuracy("Yes!", ["yes"] * 10, "evalai") == 1.0
    assert vqa_accuracy("Yes!", ["yes"] * 10, "official") == 0.0
    assert vqa_accuracy("10:30", ["10 30"] * 4 + ["ten"] * 6, "official") == 1.0
    with pytest.raises(ValueError, match="unknown VQA scorer variant"):
        vqa_accuracy("x", ["x"] * 10, "mmf")
