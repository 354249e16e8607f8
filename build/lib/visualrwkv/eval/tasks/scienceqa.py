"""ScienceQA test, reported as IMG accuracy (SPEC §10.5, LLaVA `eval_science_qa.py` at c121f04).

Which problems make up the IMG denominator:
- `llava` (default), as LLaVA's script: the answered test problems whose answer line's "prompt" contains
  "<image>" (a line without a prompt: the question has an image). An unanswered image problem is *not* in it
  (LLaVA gives it the prompt 'Unknown'); it is wrong in `accuracy_all`, and the result's notes count it.
- `strict`: every test problem with an image; an unanswered one is wrong.
With a complete answer file written by `eval run` or LLaVA's model_vqa_science.py the two agree. Question ids are
matched as strings (LLaVA compares the answer line's id with the split's string ids as they are).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, image_file, read_json, write_json
from visualrwkv.eval.items import IMAGE_TOKEN, LETTER_ANSWER, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.parsers import SCIENCEQA_FAILED, SCIENCEQA_OPTIONS, scienceqa_choice_index, scienceqa_letter
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import group_percent, percent, with_image

QUESTIONS = "llava_test_CQM-A.json"
PROBLEMS = "problems.json"
SPLITS = "pid_splits.json"
IMAGES = "images/test"
LAYOUT = f"{QUESTIONS} (LLaVA), {PROBLEMS} + {SPLITS} (ScienceQA data/scienceqa), {IMAGES}/<image>"


def _problems(data_dir: Path) -> tuple[dict, list[str]]:
    ppath, spath = data_dir / PROBLEMS, data_dir / SPLITS
    problems = read_json(ppath, "ScienceQA problems")
    splits = read_json(spath, "ScienceQA pid splits")
    if not isinstance(problems, dict):
        raise data_error(ppath, None, "expected an object keyed by problem id")
    if not isinstance(splits, dict) or not isinstance(splits.get("test"), list):
        raise data_error(spath, None, "expected an object with a 'test' list of problem ids")
    test = [str(pid) for pid in splits["test"]]
    for pid in test:
        problem = problems.get(pid)
        if not isinstance(problem, dict):
            raise data_error(ppath, None, f"no problem {pid!r} (listed in {SPLITS} 'test')")
        choices = field_of(problem, "choices", list, ppath, f"[{pid!r}]")
        answer = field_of(problem, "answer", int, ppath, f"[{pid!r}]")
        if not 0 <= answer < len(choices):
            raise data_error(ppath, f"[{pid!r}]", f"answer {answer} is not an index into {len(choices)} choices")
    return problems, test


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    problems, test = _problems(data_dir)
    qpath = data_dir / QUESTIONS
    entries = read_json(qpath, "ScienceQA LLaVA questions")
    if not isinstance(entries, list):
        raise data_error(qpath, None, "expected a list of conversations")
    wanted = set(test)
    items: dict[str, EvalItem] = {}
    for k, entry in enumerate(entries):
        where = f"[{k}]"
        if not isinstance(entry, dict):
            raise data_error(qpath, where, "each entry must be an object")
        pid = str(field_of(entry, "id", (str, int), qpath, where))
        if pid not in wanted:
            raise data_error(qpath, where, f"id {pid!r} is not in {SPLITS} 'test'")
        if pid in items:
            raise data_error(qpath, where, f"id {pid!r} repeats")
        turns = field_of(entry, "conversations", list, qpath, where)
        if not turns or not isinstance(turns[0], dict) or not isinstance(turns[0].get("value"), str):
            raise data_error(qpath, where, "conversations[0] must be an object with a string 'value'")
        # the value is used as is (SPEC §10.1; it already ends with the letter instruction), except that, as in
        # LLaVA's model_vqa_science.py, the 'image' key decides whether "<image>\n" leads the prompt
        value = turns[0]["value"]
        image = None
        if "image" in entry:
            image = image_file(data_dir / IMAGES, field_of(entry, "image", str, qpath, where), qpath, where)
            value = with_image(value.replace(IMAGE_TOKEN, "").strip())
        elif IMAGE_TOKEN in value:
            raise data_error(qpath, where, f"the prompt has {IMAGE_TOKEN} but the entry has no 'image'")
        problem = problems[pid]
        meta = {
            "answer": problem["answer"],
            "n_choices": len(problem["choices"]),
            "subject": str(problem.get("subject", "unknown")),
            "has_image": image is not None,
        }
        items[pid] = EvalItem(pid, value, image, meta=meta)
    absent = [pid for pid in test if pid not in items]
    if absent:
        raise data_error(qpath, None, f"{len(absent)} test problems have no question, e.g. {absent[:3]}")
    return [items[pid] for pid in test]


SCORERS = {
    "llava": "LLaVA eval_science_qa.py: parser (letter / 'X. ' / 'The answer is X.' / FAILED); IMG = answered "
             "problems whose answer-line prompt has <image>",
    "strict": "LLaVA's parser; IMG = every problem with an image, an unanswered one counted as wrong",
}  # fmt: skip


def _correct(item: EvalItem, answers: Mapping[ItemKey, str]) -> bool:
    # a missing prediction is parsed as the text "FAILED", as LLaVA does
    letter = scienceqa_letter(answers.get(item.key, SCIENCEQA_FAILED))
    return scienceqa_choice_index(letter, item.meta["n_choices"]) == item.meta["answer"]


def _in_image_group(item: EvalItem, answers: Mapping[ItemKey, str], prompts: Mapping[ItemKey, str], variant: str):
    if variant == "strict":
        return item.meta["has_image"]
    # LLaVA: is_multimodal = '<image>' in the answer line's "prompt". An unanswered problem gets the placeholder
    # prompt 'Unknown', so it leaves the IMG denominator (it still counts, as wrong, in the all-questions
    # accuracy). A line without a prompt (LLaVA would fail on it) counts as what model_vqa_science.py writes:
    # "<image>" exactly when the question has an image.
    if item.key not in answers:
        return False
    return IMAGE_TOKEN in prompts[item.key] if item.key in prompts else item.meta["has_image"]


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str, prompts: Mapping[ItemKey, str]):
    correct = [float(_correct(item, answers)) for item in items]
    image_hits = [c for item, c in zip(items, correct) if _in_image_group(item, answers, prompts, variant)]
    return Scored(
        score=percent(image_hits),
        metric="IMG accuracy (%): test questions whose prompt contains <image>",
        scorer=SCORERS[variant],
        n_questions=len(image_hits),
        breakdown={
            "subject": group_percent((i.meta["subject"], c) for i, c in zip(items, correct)),
            "context": group_percent(
                ("image" if i.meta["has_image"] else "no image", c) for i, c in zip(items, correct)
            ),
        },
        extra={"accuracy_all": percent(correct), "n_all": len(items)},
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    answer = item.meta["answer"]
    if not correct:
        return SCIENCEQA_OPTIONS[(answer + 1) % item.meta["n_choices"]]
    letter = SCIENCEQA_OPTIONS[answer]
    # cycle through the three accepted forms (rules a, b, c)
    return (letter, f"{letter}. something", f"The answer is {letter}.")[int(item.question_id) % 3]


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    problems, entries, test = {}, [], []
    n_text = max(1, n // 2)
    # n image problems, n_text text-only ones, then one train problem that readers must leave out
    for k in range(n + n_text + 1):
        pid = str(k + 1)
        has_image = k < n
        if has_image:
            scene = shapes.random_scene(rng)
            shapes.save(scene, out / IMAGES / pid / "image.png")
            present = sorted({s.color for s in scene.shapes})
            absent = [c for c in shapes.COLORS if c not in present]  # at most 3 colors are drawn, so never empty
            color = rng.choice(present)
            choices = [color] + rng.sample(absent, rng.randint(1, len(absent)))
            rng.shuffle(choices)
            question, answer = "Which of these colors appears in the picture?", choices.index(color)
        else:
            a, b = rng.sample(range(10), 2)
            choices = [str(a), str(b)]
            question, answer = "Which number is larger?", choices.index(str(max(a, b)))
        subject = "natural science" if has_image else "language science"
        split = "train" if k == n + n_text else "test"
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "", "subject": subject,
                         "image": "image.png" if has_image else None, "split": split}  # fmt: skip
        if split == "train":
            continue
        test.append(pid)
        options = " ".join(f"({SCIENCEQA_OPTIONS[i]}) {c}" for i, c in enumerate(choices))
        value = f"Context: N/A\nQuestion: {question}\nOptions: {options}\n{LETTER_ANSWER}"
        entry = {"id": pid, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": ""}]}
        if has_image:
            entry["image"] = f"{pid}/image.png"
            entry["conversations"][0]["value"] = with_image(value)
        entries.append(entry)
    write_json(out / PROBLEMS, problems)
    write_json(out / SPLITS, {"train": [p for p in problems if p not in test], "val": [], "test": test})
    write_json(out / QUESTIONS, entries)


TASK = TaskSpec(
    name="scienceqa",
    title="ScienceQA-IMG",
    layout=LAYOUT,
    splits=("test",),
    variants=("llava", "strict"),
    read=read,
    score=score,
    reads_prompts=True,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
