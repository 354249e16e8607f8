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


# VLMEvalKit's rule-based option matching, `vlmeval/utils/matching_util.py` `can_infer` as of commit e8e78f0
# (2026-08-18; the file last changed in 2cf2a36, 2026-06-25), which MMBench uses before (or, with exact matching,
# instead of) a judge model. Written from its rules; every branch below is one of them.
API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
REFUSED = "Z"  # VLMEvalKit's label for "no option": it never equals a ground-truth letter
# Characters read as spaces when looking for a bare option letter ("(B)", "B.", "**B**" all name B).
_OPTION_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
# "The correct answer is **B**", "the answer is c" (case-insensitive, so "answer is determined" names D).
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def _option_by_letter(text: str, options: Mapping[str, str]) -> str | None:
    """`can_infer_option`: a letter, REFUSED, or None (then the option texts are tried)."""
    if API_FAILURE in text:
        return None
    if any(phrase in text for phrase in REFUSALS):
        return REFUSED
    words = _OPTION_SEPARATORS.sub(" ", text).split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1:
        # only if the letter's first occurrence is among the last four words ("A" as an article comes early)
        if words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and REFUSED in words:
        return REFUSED  # a bare "Z" (VLMEvalKit's own "none of the options")
    found = _ANSWER_IS.search(text)
    if found and found.group(1).upper() in options:
        return found.group(1).upper()
    return None


def _option_by_text(text: str, options: Mapping[str, str]) -> str | None:
    """`can_infer_text`: the one option whose text occurs in the answer (case-insensitive), if the answer is short."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(str(value)) for value in options.values()):
        return None  # longer than twice all the options together: free text, not an option
    named = [letter for letter, value in options.items() if str(value).lower() in lowered]
    return named[0] if len(named) == 1 else None


def extract_option(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter an answer names, REFUSED ("Z", always wrong) or None (unextractable, scored as wrong).

    VLMEvalKit `can_infer` (commit e8e78f0), default settings (its VERBOSE debug switch, which rejects a
    lone "A" in answers of more than three words, is not reproduced):
    1. an answer containing "Failed to obtain answer via API" skips to step 4;
    2. an answer containing one of its four refusal phrases is REFUSED;
    3. with `.()[],:;!*#{}` read as spaces, split into words: if exactly one option letter occurs as a word and
       its first occurrence is among the last four words, that letter; if no option letter occurs but "Z" does,
       REFUSED; otherwise, the letter of the first "(correct) answer is X" (X one of A-D, any case, `*`s around
       it allowed) if X is an option;
    4. otherwise, unless the answer is longer than twice the options' total length, the one option whose text
       occurs in it (case-insensitive); else None. There is no judge model here: None is scored as wrong.
    """
    return _option_by_letter(text, options) or _option_by_text(text, options)
