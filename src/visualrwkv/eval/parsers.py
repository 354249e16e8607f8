"""Turning a model's free-text answer into the label a benchmark scores (SPEC §10.4, §10.5, §10.7, §10.8).

Each parser reproduces the reference implementation named in its docstring, quirks included.
"""

from __future__ import annotations

import re
from typing import Mapping

SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
SCIENCEQA_FAILED = "FAILED"
_SCIENCEQA_SENTENCE = re.compile(r"The answer is ([A-Z]).")


def pope_answer(text: str) -> str:
    """LLaVA `eval_pope.py`: "no" if the first sentence has the word "No", "not" or "no", else "yes".

    Case-sensitive and split on single spaces only, so "NO" -> yes, "Nope" -> yes, but "No." -> no.
    """
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def scienceqa_letter(text: str) -> str:
    """LLaVA `eval_science_qa.py`: the option letter a prediction names, or "FAILED".

    (a) the prediction itself if it is one of A-E; (b) its first character if that is one of A-E and the next two
    characters are ". "; (c) the letter of the single match of "The answer is ([A-Z])."; (d) "FAILED".
    """
    if text in SCIENCEQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SCIENCEQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SCIENCEQA_SENTENCE.findall(text)
    return found[0] if len(found) == 1 else SCIENCEQA_FAILED


def scienceqa_choice_index(letter: str, n_choices: int) -> int:
    """Index of the parsed letter among the problem's choices, or -1 (wrong) when it names none of them."""
    valid = SCIENCEQA_OPTIONS[:n_choices]
    return valid.index(letter) if letter in valid else -1


def mme_answer(text: str) -> str:
    """lmms-eval `parse_pred_ans` (from Otter): "yes", "no" or "other" (always wrong)."""
    text = text.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


# Characters read as separators when looking for a bare option letter ("(B)", "B.", "**B**" all name B).
_OPTION_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def extract_option(text: str, options: Mapping[str, str]) -> str | None:
    """Rule-based option extraction for multiple choice (MMBench, SEED), after VLMEvalKit's `can_infer`.

    1. Treat `.()[],:;!*#{}` as spaces and split into words: if exactly one distinct option letter occurs as a
       word, that letter.
    2. Otherwise, if exactly one option's text occurs (case-insensitive) inside the answer, that option.
    3. Otherwise None: the answer is unextractable. There is no GPT judge here, so it is scored as wrong.
    """
    words = set(_OPTION_SEPARATORS.sub(" ", text).split())
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    lowered = text.lower()
    named = [letter for letter, value in options.items() if str(value).lower() in lowered]
    return named[0] if len(named) == 1 else None
