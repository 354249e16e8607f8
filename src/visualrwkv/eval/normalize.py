"""VQA answer normalisation, two pinned variants (SPEC §10.2).

- `official`: GT-Vision-Lab/VQA `vqaEval.py`: `official_prediction` for the model's answer, `official_punctuation`
  (only) for the ground truth, and only when the 10 GT answers are not all identical (see `vqa_accuracy`).
- `evalai`: the EvalAI/MMF answer processor (`m4c_evaluator.EvalAIAnswerProcessor`, LLaVA's
  `convert_vqav2_for_submission.py`, lmms-eval): `evalai_answer`, applied to the prediction and to every GT answer.

Both keep the reference code's quirks on purpose, because published numbers were computed with them.
"""

from __future__ import annotations

import re

# Official list: has ':' and "'" (so "10:30" -> "10 30", "it's" -> "it s"); lacks '-' and '!'.
OFFICIAL_PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
# EvalAI list: no ':' or "'"; adds braces, '-' and '!'.
EVALAI_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

_OFFICIAL_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")
# Both reference implementations write "(?!<=\d)(\.)(?!\d)": the intended look-behind is a typo for a look-ahead
# that can never match before a '.', so the pattern means "a period not followed by a digit" ("1.5" keeps its
# period, "yes." loses it). Written here in its effective form.
# The reference code also passes re.UNICODE (= 32) where `sub` expects `count`, so it stops after 32 periods;
# SPEC §10.2 says "every period", which is what this does (the two differ only for answers with > 32 periods).
_PERIOD = re.compile(r"\.(?!\d)")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# The official contraction map, as `key=value` pairs. Most entries use the typographic apostrophe ’ (U+2019);
# a few use the ASCII one, exactly as in vqaEval.py. Keys with an ASCII "'" can never match in the official
# pipeline (its punctuation step removes "'"), which is faithful to the reference.
_OFFICIAL_CONTRACTIONS_TEXT = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn’t’ve couldnt’ve=couldn’t’ve
didnt=didn’t doesnt=doesn’t dont=don’t hadnt=hadn’t hadnt’ve=hadn’t’ve hadn'tve=hadn’t’ve hasnt=hasn’t
havent=haven’t hed=he’d hed’ve=he’d’ve he’dve=he’d’ve hes=he’s howd=how’d howll=how’ll hows=how’s Id’ve=I’d’ve
I’dve=I’d’ve Im=I’m Ive=I’ve isnt=isn’t itd=it’d itd’ve=it’d’ve it’dve=it’d’ve itll=it’ll let’s=let’s maam=ma’am
mightnt=mightn’t mightnt’ve=mightn’t’ve mightn’tve=mightn’t’ve mightve=might’ve mustnt=mustn’t mustve=must’ve
neednt=needn’t notve=not’ve oclock=o’clock oughtnt=oughtn’t ow’s’at=’ow’s’at ’ows’at=’ow’s’at ’ow’sat=’ow’s’at
shant=shan’t shed’ve=she’d’ve she’dve=she’d’ve she’s=she’s shouldve=should’ve shouldnt=shouldn’t
shouldnt’ve=shouldn’t’ve shouldn’tve=shouldn’t’ve somebody’d=somebodyd somebodyd’ve=somebody’d’ve
somebody’dve=somebody’d’ve somebodyll=somebody’ll somebodys=somebody’s someoned=someone’d someoned’ve=someone’d’ve
someone’dve=someone’d’ve someonell=someone’ll someones=someone’s somethingd=something’d
somethingd’ve=something’d’ve something’dve=something’d’ve somethingll=something’ll thats=that’s thered=there’d
thered’ve=there’d’ve there’dve=there’d’ve therere=there’re theres=there’s theyd=they’d theyd’ve=they’d’ve
they’dve=they’d’ve theyll=they’ll theyre=they’re theyve=they’ve twas=’twas wasnt=wasn’t wed’ve=we’d’ve
we’dve=we’d’ve weve=we've werent=weren’t whatll=what’ll whatre=what’re whats=what’s whatve=what’ve whens=when’s
whered=where’d wheres=where's whereve=where’ve whod=who’d whod’ve=who’d’ve who’dve=who’d’ve wholl=who’ll
whos=who’s whove=who've whyll=why’ll whyre=why’re whys=why’s wont=won’t wouldve=would’ve wouldnt=wouldn’t
wouldnt’ve=wouldn’t’ve wouldn’tve=wouldn’t’ve yall=y’all yall’ll=y’all’ll y’allll=y’all’ll yall’d’ve=y’all’d’ve
y’alld’ve=y’all’d’ve y’all’dve=y’all’d’ve youd=you’d youd’ve=you’d’ve you’dve=you’d’ve youll=you’ll youre=you’re
youve=you’ve
"""
OFFICIAL_CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _OFFICIAL_CONTRACTIONS_TEXT.split())
# MMF's table is the same map written with ASCII apostrophes only.
EVALAI_CONTRACTIONS: dict[str, str] = {
    k.replace("’", "'"): v.replace("’", "'") for k, v in OFFICIAL_CONTRACTIONS.items()
}


def _punctuation(text: str, marks: tuple[str, ...], digit_comma: re.Pattern) -> str:
    # The keep-or-space decision looks at the *original* text for every mark: a mark touching a space anywhere,
    # or any digit-comma-digit anywhere, makes the mark vanish instead of becoming a space.
    delete_all = digit_comma.search(text) is not None
    out = text
    for p in marks:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str, contractions: dict[str, str]) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def official_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation` (applied alone to GT answers)."""
    return _punctuation(text, OFFICIAL_PUNCTUATION, _OFFICIAL_DIGIT_COMMA)


def official_prediction(text: str) -> str:
    """vqaEval.py treatment of a predicted answer: whitespace, punctuation, then digits/articles/contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(official_punctuation(text), OFFICIAL_CONTRACTIONS)


def evalai_punctuation(text: str) -> str:
    return _punctuation(text, EVALAI_PUNCTUATION, _EVALAI_DIGIT_COMMA)


def evalai_answer(text: str) -> str:
    """The EvalAI/MMF answer processor: word_tokenize, whitespace, punctuation, digits/articles/contractions."""
    # word_tokenize: lowercase, drop ',' and '?', split off the possessive "'s"
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(evalai_punctuation(text), EVALAI_CONTRACTIONS)
