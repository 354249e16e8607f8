"""VQA answer normalisation, two named variants.

- `official`: GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` at HEAD (commit a013f00, 2021,
  "Fixed processing answers bug"): `official_answer` = `processPunctuation` then `processDigitArticle`, applied to
  the prediction *and* every ground-truth answer, but only when the ten GT answers are not all identical
  (`vqa_accuracy` holds that rule). SPEC §10.2 describes the 2015 beta of that file (punctuation with ':' and "'",
  typographic-apostrophe contractions, only punctuation on the GT); the HEAD code is what is reproduced here.
- `evalai`: the EvalAI/MMF answer processor (LLaVA's `m4c_evaluator.EvalAIAnswerProcessor`, used by
  `convert_vqav2_for_submission.py` and TextVQA): a `word_tokenize` step, then the same two steps with a different
  comma regex, applied to the prediction and to every GT answer unconditionally.

(lmms-eval's `vqav2_process_results` is neither: it skips `word_tokenize`; it is not reproduced here.)
Both keep the reference code's quirks on purpose, because published numbers were computed with them; each quirk
is named where it is reproduced.
"""

from __future__ import annotations

import re

# The same 21 marks in vqaEval.py (HEAD) and in MMF: no ':' and no "'" (so "10:30" and "it's" keep them).
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The two differ in the comma test only: vqaEval.py wants one comma between two digits, MMF a run of commas.
_OFFICIAL_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")
# Both write "(?!<=\d)(\.)(?!\d)": the intended look-behind is a typo for a look-ahead that can never match at a
# '.', so the pattern means "a period not followed by a digit" ("1.5" keeps its period, "yes." loses it).
# Written here in its effective form.
_PERIOD = re.compile(r"\.(?!\d)")
# Quirk: both call `periodStrip.sub("", text, re.UNICODE)`, passing the flag (= 32) where `sub` takes `count`,
# so only the first 32 such periods are removed.
PERIOD_SUBSTITUTIONS = int(re.UNICODE)

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# The contraction map of vqaEval.py (HEAD, since its 2016 "apostrophe symbol" fix) and of MMF, as `key=value`
# pairs, ASCII apostrophes throughout. Its own quirks are kept: "somebody'd" maps to "somebodyd", and the
# capitalised keys (Im, Ive, Id've, I'dve) can never match, since the words are lowercased first.
_CONTRACTIONS_TEXT = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't
havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at
shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've
they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've
we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's
whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're
youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTIONS_TEXT.split())


def _punctuation(text: str, digit_comma: re.Pattern) -> str:
    # The keep-or-space decision looks at the *original* text for every mark: a mark touching a space anywhere,
    # or any digit-comma-digit anywhere, makes the mark vanish instead of becoming a space.
    delete_all = digit_comma.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=PERIOD_SUBSTITUTIONS)


def digits_articles(text: str) -> str:
    """`processDigitArticle`: lowercase, split on whitespace, number words to digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip (both scorers do this first)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`."""
    return _punctuation(text, _OFFICIAL_DIGIT_COMMA)


def official_answer(text: str) -> str:
    """vqaEval.py's full treatment of one answer (prediction or GT) when the GT answers differ."""
    return digits_articles(official_punctuation(whitespace(text)))


def evalai_punctuation(text: str) -> str:
    return _punctuation(text, _EVALAI_DIGIT_COMMA)


def evalai_answer(text: str) -> str:
    """The EvalAI/MMF answer processor: word_tokenize, whitespace, punctuation, digits/articles/contractions."""
    # word_tokenize: lowercase, drop ',' and '?', split off the possessive "'s", strip
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return digits_articles(evalai_punctuation(whitespace(text)))
