"""VQA normalisers and the 10-answer soft accuracy. Expected values are worked out by reading
GT-Vision-Lab/VQA vqaEval.py at HEAD (a013f00) and LLaVA's m4c_evaluator.EvalAIAnswerProcessor (MMF)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from visualrwkv.eval.normalize import (
    CONTRACTIONS,
    evalai_answer,
    evalai_punctuation,
    official_answer,
    official_punctuation,
    whitespace,
)
from visualrwkv.eval.vqa_accuracy import leave_one_out_accuracy, vqa_accuracy

# raw -> (official at HEAD, EvalAI). SPEC §10.2's official column described the 2015 beta ("10:30" -> "10 30",
# "it's" -> "it s", "Yes!" -> "yes!"); HEAD keeps ':' and "'" and removes '-', '!' and braces.
WORKED_EXAMPLES = [
    ("Yes.", "yes", "yes"),
    ("Two", "2", "2"),
    ("A dog", "dog", "dog"),
    ("The red one.", "red 1", "red 1"),
    ("1.5", "1.5", "1.5"),
    ("3,000", "3000", "3000"),
    ("it's red", "it's red", "it 's red"),  # only EvalAI's word_tokenize splits off "'s"
    ("black-and-white", "black and white", "black and white"),
    ("Yes!", "yes", "yes"),
    ("10:30", "10:30", "10:30"),
    ("up/down", "up down", "up down"),
    ("{x}", "x", "x"),
    ("dont know", "don't know", "don't know"),
    ("What color?", "what color", "what color"),
    ("1,,2", "1 2", "12"),  # the comma regexes differ: vqaEval.py wants exactly one comma between digits
]


@pytest.mark.parametrize("raw, official, _", WORKED_EXAMPLES)
def test_official_worked_examples(raw, official, _):
    assert official_answer(raw) == official


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


def test_period_regex_stops_after_32_substitutions():
    # re.UNICODE (= 32) is passed where `sub` takes `count`
    assert official_punctuation("a." * 40) == "a" * 32 + "a." * 8
    assert evalai_answer("a." * 40) == "a" * 32 + "a." * 8
    assert vqa_accuracy("a." * 40, ["a" * 40] * 9 + ["b"], "official") == 0.0
    assert vqa_accuracy("a." * 40, ["a." * 40] * 9 + ["b"], "official") == 1.0


def test_punctuation_decision_looks_at_the_whole_original_text():
    # "/ " occurs once, so *every* "/" is deleted, even the one between letters
    assert official_punctuation("x/y / z") == "xy  z"
    assert official_answer("x/y / z") == "xy z"
    assert official_punctuation("x/y") == "x y"
    # ... the original text, not the text after earlier marks were handled: ";" -> " " makes " /", which is ignored
    assert official_punctuation("a;/b") == "a  b"
    # a digit-comma-digit anywhere deletes every listed mark instead of spacing it
    assert official_punctuation("1,000 cats/dogs") == "1000 catsdogs"
    assert official_punctuation("cats/dogs, 1") == "cats dogs 1"  # ", " deletes ","; "/" becomes a space


def test_contractions_use_the_ascii_apostrophe_quirks_included():
    assert len(CONTRACTIONS) == 120
    assert all("\u2019" not in k + v for k, v in CONTRACTIONS.items())
    assert official_answer("isnt") == "isn't"
    assert official_answer("couldn'tve") == "couldn't've"  # "'" is not punctuation at HEAD, so such keys match
    assert official_answer("somebody'd") == "somebodyd"  # the map's own reversed entry
    assert official_answer("Im") == "im"  # capitalised keys never match: words are lowercased first
    assert official_answer("don\u2019t") == "don\u2019t"  # a typographic apostrophe is left alone
    assert evalai_answer("What's that?") == "what 's that"


def test_numbers_articles_and_whitespace():
    assert official_answer("none") == "0"
    assert official_answer("an apple") == "apple"
    assert official_answer("The") == ""
    assert official_answer("Ten\tdogs\n") == "10 dogs"
    assert official_answer("yes\nno") == "yes no"
    assert evalai_answer("  Three  Apples ") == "3 apples"


def test_evalai_hyphen_next_to_space_is_deleted():
    assert evalai_answer("well-known") == "well known"
    assert evalai_answer("- yes") == "yes"


@pytest.mark.parametrize("n, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_oracle_values(n, expected):
    answers = ["cat"] * n + ["dog"] * (10 - n)
    assert leave_one_out_accuracy("cat", answers) == pytest.approx(expected)
    assert vqa_accuracy("Cat.", answers, "evalai") == pytest.approx(expected)
    # with ten identical answers the official scorer leaves "Cat." as it is (a quirk: see below)
    assert vqa_accuracy("Cat.", answers, "official") == pytest.approx(expected if n < 10 else 0.0)


def test_leave_one_out_is_the_mean_of_ten_choose_nine():
    # by hand: 2 matches; the 2 matching GTs each see 1 other match (1/3), the 8 others see 2 (2/3)
    assert leave_one_out_accuracy("a", ["a", "a"] + ["b"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    with pytest.raises(ValueError):
        leave_one_out_accuracy("a", [])


def test_official_normalises_nothing_when_the_ten_answers_are_identical():
    # HEAD: with one distinct GT answer (after the whitespace step) neither side goes through punctuation/digits
    assert vqa_accuracy("yes", ["yes."] * 10, "official") == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10, "official") == 0.0
    assert vqa_accuracy("Yes!", ["yes"] * 10, "official") == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10, "official") == 1.0  # whitespace is always cleaned, both sides
    assert vqa_accuracy("yes", ["\tyes "] * 10, "official") == 1.0
    # EvalAI normalises every GT answer and the prediction, always
    assert vqa_accuracy("yes", ["yes."] * 10, "evalai") == 1.0
    assert vqa_accuracy("Yes!", ["yes"] * 10, "evalai") == 1.0


def test_official_normalises_the_ground_truth_fully_when_the_answers_differ():
    # processPunctuation *and* processDigitArticle run on every GT answer (the 2021 fix)
    assert vqa_accuracy("yes", ["yes."] * 9 + ["yes"], "official") == 1.0
    assert vqa_accuracy("2", ["Two"] * 9 + ["three"], "official") == 1.0
    assert vqa_accuracy("red", ["Red"] * 9 + ["blue"], "official") == 1.0
    assert vqa_accuracy("dog", ["a dog"] * 3 + ["cat"] * 7, "official") == pytest.approx(0.9)
    with pytest.raises(ValueError, match="unknown VQA scorer variant"):
        vqa_accuracy("x", ["x"] * 10, "mmf")


_answer_text = st.text(alphabet="aAbB yY.,:;'!?-/()12 \n\t", max_size=10)


@given(_answer_text, st.lists(_answer_text, min_size=10, max_size=10), st.sampled_from(["official", "evalai"]))
def test_soft_accuracy_takes_one_of_five_values(prediction, answers, variant):
    assert min(abs(vqa_accuracy(prediction, answers, variant) - v) for v in (0, 0.3, 0.6, 0.9, 1)) < 1e-12


@given(_answer_text, st.lists(_answer_text, min_size=6, max_size=6), st.sampled_from(["official", "evalai"]))
def test_a_prediction_given_by_four_annotators_scores_one(prediction, others, variant):
    assert vqa_accuracy(prediction, [prediction] * 4 + others, variant) == 1.0


@given(_answer_text, st.lists(_answer_text, min_size=10, max_size=10))
def test_official_ignores_surrounding_whitespace_and_tabs(prediction, answers):
    assert vqa_accuracy(" \t" + prediction + "\n", answers, "official") == vqa_accuracy(prediction, answers, "official")


# The 21 marks of vqaEval.py (HEAD) and MMF, spelled out here rather than read from the module.
PUNCTUATION_MARKS = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


@pytest.mark.parametrize("mark", PUNCTUATION_MARKS)
def test_each_punctuation_mark_becomes_a_space_or_vanishes(mark):
    # between two letters the mark becomes a space ...
    assert official_punctuation(f"a{mark}b") == "a b"
    assert evalai_punctuation(f"a{mark}b") == "a b"
    # ... touching a space on either side it is deleted (a space would be left otherwise: "a  b")
    assert official_punctuation(f"a {mark}b") == "a b"
    assert official_punctuation(f"a{mark} b") == "a b"
    assert evalai_punctuation(f"a {mark}b") == "a b"
    # and a digit-comma-digit anywhere deletes it too
    assert official_punctuation(f"1,2 a{mark}b") == "12 ab"


@pytest.mark.parametrize("kept", [":", "'", "#", "$", "%", "&", "*", "|", "~", "^"])
def test_marks_outside_the_list_are_kept(kept):
    assert official_punctuation(f"a{kept}b") == f"a{kept}b"
    assert evalai_punctuation(f"a{kept}b") == f"a{kept}b"


def test_the_two_digit_comma_rules_on_their_own():
    # vqaEval.py: exactly one comma between digits; MMF: a run of commas. Both then delete every mark.
    assert official_punctuation("1,,000 a/b") == "1  000 a b"
    assert evalai_punctuation("1,,000 a/b") == "1000 ab"
    assert official_punctuation("1,000 a/b") == "1000 ab"
    assert evalai_punctuation("1,000 a/b") == "1000 ab"


NUMBER_WORDS_SPELLED = [
    ("none", "0"), ("zero", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"), ("five", "5"),
    ("six", "6"), ("seven", "7"), ("eight", "8"), ("nine", "9"), ("ten", "10"),
]  # fmt: skip


@pytest.mark.parametrize("word, digit", NUMBER_WORDS_SPELLED)
def test_every_number_word_becomes_its_digits(word, digit):
    assert official_answer(word) == digit
    assert official_answer(f"{word.capitalize()} cats") == f"{digit} cats"
    assert evalai_answer(word) == digit


def test_larger_number_words_are_left_alone():
    assert official_answer("eleven") == "eleven"
    assert official_answer("twenty") == "twenty"


def test_whitespace_step_turns_newlines_and_tabs_into_spaces():
    assert whitespace(" a\nb\tc \n") == "a b c"
    assert whitespace("a\n\tb") == "a  b"
    # ten identical GT answers: only the whitespace step runs, so "\n" inside an answer must become a space
    assert vqa_accuracy("red car", ["red\ncar"] * 10, "official") == 1.0
    assert vqa_accuracy("red car", ["red\tcar"] * 10, "official") == 1.0
    assert vqa_accuracy("red car", ["red  car"] * 10, "official") == 0.0


def test_evalai_word_tokenize_drops_commas_and_question_marks_before_punctuation():
    # dropped, not spaced: the punctuation step would have made "a b"
    assert evalai_answer("x,y") == "xy"
    assert evalai_answer("x?y") == "xy"
    assert official_answer("x,y") == "x y"  # ("a" would be dropped as an article)
    assert official_answer("x?y") == "x y"
