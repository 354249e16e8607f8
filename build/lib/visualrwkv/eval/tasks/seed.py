"""SEED-Bench, image subset (LLaVA `convert_seed_for_submission.py`): 4-way multiple choice, accuracy by type.

The score is LLaVA's "image accuracy" (its `eval_single(..., eval_only_type='image')`). A full LLaVA answer file
also answers the video questions: those lines are skipped and counted in the result's notes. Question ids are
matched as strings, so "100" and 100 name the same question (LLaVA converts the annotation's id with `int()` and
would miss an answer line that wrote it as a string; that line would be scored as wrong there).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, image_file, read_json, write_json
from visualrwkv.eval.items import LETTER_ANSWER, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.parsers import extract_option
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import group_percent, percent, with_image

ANNOTATIONS = "SEED-Bench.json"
IMAGES = "SEED-Bench-image"
LETTERS = ("A", "B", "C", "D")
LAYOUT = f"{ANNOTATIONS} (questions with data_type 'image' are used), {IMAGES}/<data_id>[.jpg]"
SCORERS = {
    "llava": "LLaVA convert_seed_for_submission.py: the answer text must equal the letter exactly",
    "rule": "VLMEvalKit can_infer option extraction (commit e8e78f0), as for MMBench",
}


def _questions(path: Path) -> dict:
    doc = read_json(path, "SEED-Bench annotations")
    if not isinstance(doc, dict) or not isinstance(doc.get("questions"), list):
        raise data_error(path, None, "expected an object with a 'questions' list")
    return doc


def video_ids(data_dir: Path, split: str) -> set[str]:
    """The ids of the video questions, which a full LLaVA answer file also answers; they are skipped."""
    questions = _questions(data_dir / ANNOTATIONS)["questions"]
    return {str(q.get("question_id")) for q in questions if isinstance(q, dict) and q.get("data_type") == "video"}


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    path = data_dir / ANNOTATIONS
    doc = _questions(path)
    declared = doc.get("question_type")
    type_names = {v: k for k, v in declared.items()} if isinstance(declared, dict) else {}
    items, seen = [], set()
    for k, q in enumerate(doc["questions"]):
        where = f"questions[{k}]"
        if not isinstance(q, dict):
            raise data_error(path, where, "each question must be an object")
        if q.get("data_type", "image") != "image":
            continue  # the video part of SEED-Bench is out of scope (answers to it are skipped: `video_ids`)
        qid = field_of(q, "question_id", (str, int), path, where)
        if str(qid) in seen:
            raise data_error(path, where, f"question_id {qid!r} repeats")
        seen.add(str(qid))
        question = field_of(q, "question", str, path, where)
        choices = [field_of(q, f"choice_{letter.lower()}", (str, int, float), path, where) for letter in LETTERS]
        answer = field_of(q, "answer", str, path, where)
        if answer not in LETTERS:
            raise data_error(path, where, f"answer {answer!r} is not one of A-D")
        data_id = field_of(q, "data_id", str, path, where)
        name = data_id if Path(data_id).suffix.lower() in (".jpg", ".jpeg", ".png") else f"{data_id}.jpg"
        image = image_file(data_dir / IMAGES, name, path, where)
        type_id = q.get("question_type_id")
        options = {letter: str(c) for letter, c in zip(LETTERS, choices)}
        body = "".join(f"\n{letter}. {option}" for letter, option in options.items())
        meta = {"answer": answer, "options": options, "type": str(type_names.get(type_id, type_id))}
        items.append(EvalItem(qid, with_image(f"{question}{body}\n{LETTER_ANSWER}"), image, meta=meta))
    if not items:
        raise data_error(path, None, "no image questions")
    return items


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    def correct(item: EvalItem) -> float:
        if item.key not in answers:
            return 0.0
        text = answers[item.key]
        pred = text if variant == "llava" else extract_option(text, item.meta["options"])
        return float(pred == item.meta["answer"])

    hits = [correct(item) for item in items]
    return Scored(
        score=percent(hits),
        metric="accuracy (%)",
        scorer=SCORERS[variant],
        n_questions=len(items),
        breakdown={"question_type": group_percent((i.meta["type"], h) for i, h in zip(items, hits))},
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    letter = item.meta["answer"]
    return letter if correct else next(other for other in LETTERS if other != letter)


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    types = {"Scene Understanding": 1, "Instances Counting": 5, "Action Recognition": 10}
    questions = []
    for k in range(n):
        scene = shapes.random_scene(rng)
        data_id = f"{1000 + k}_{rng.randrange(10**9)}.jpg"
        shapes.save(scene, out / IMAGES / data_id)
        count = len(scene.shapes)
        choices = [str(c) for c in rng.sample([c for c in range(1, 6) if c != count], 3)] + [str(count)]
        rng.shuffle(choices)
        questions.append({
            "question_id": str(100 + k), "question": "How many shapes are in the image?", "data_id": data_id,
            "data_type": "image", "question_type_id": 5, "answer": LETTERS[choices.index(str(count))],
            **{f"choice_{letter.lower()}": c for letter, c in zip(LETTERS, choices)},
        })  # fmt: skip
    # a video question, which the image-subset reader must skip
    questions.append({"question_id": "999", "question": "What happens?", "data_id": "v.mp4", "data_type": "video",
                      "question_type_id": 10, "answer": "A", "choice_a": "x", "choice_b": "y", "choice_c": "z",
                      "choice_d": "w"})  # fmt: skip
    write_json(out / ANNOTATIONS, {"question_type": types, "questions": questions})


TASK = TaskSpec(
    name="seed",
    title="SEED-Bench (image)",
    layout=LAYOUT,
    splits=("image",),
    variants=("llava", "rule"),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
    unscored=video_ids,
    unscored_what="SEED-Bench video questions",
)
