"""VQAv2: val (scored here) and test-dev (EvalAI server only; see `write_submission`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, iter_jsonl, read_json, write_json, write_jsonl
from visualrwkv.eval.items import EvalDataError, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.normalize import evalai_answer
from visualrwkv.eval.predictions import match_predictions, read_predictions
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import group_percent, percent, read_question_jsonl, short_answer, with_image
from visualrwkv.eval.vqa_accuracy import VQA_SCORERS, VQA_VARIANTS, vqa_accuracy
from visualrwkv.utils import atomic_write

VAL_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
VAL_IMAGES = "val2014"
TESTDEV_QUESTIONS = "llava_vqav2_mscoco_test-dev2015.jsonl"
TEST_QUESTIONS = "llava_vqav2_mscoco_test2015.jsonl"  # optional: the whole test set, for a full submission
TEST_IMAGES = "test2015"

LAYOUT = (
    f"split val: {VAL_QUESTIONS}, {VAL_ANNOTATIONS}, {VAL_IMAGES}/COCO_val2014_<image_id:012d>.jpg\n"
    f"split testdev: {TESTDEV_QUESTIONS}, {TEST_IMAGES}/<image>; optional {TEST_QUESTIONS} "
    "(the submission then lists every test2015 question, as LLaVA does)"
)


def val_image_name(image_id: int) -> str:
    return f"COCO_val2014_{image_id:012d}.jpg"


def _read_val(data_dir: Path) -> list[EvalItem]:
    qpath, apath = data_dir / VAL_QUESTIONS, data_dir / VAL_ANNOTATIONS
    questions = read_json(qpath, "VQAv2 val questions")
    annotations = read_json(apath, "VQAv2 val annotations")
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise data_error(qpath, None, "expected an object with a 'questions' list")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise data_error(apath, None, "expected an object with an 'annotations' list")
    by_id: dict[int, dict] = {}
    for k, ann in enumerate(annotations["annotations"]):
        where = f"annotations[{k}]"
        if not isinstance(ann, dict):
            raise data_error(apath, where, "each annotation must be an object")
        qid = field_of(ann, "question_id", int, apath, where)
        answers = field_of(ann, "answers", list, apath, where)
        if len(answers) != 10 or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
            raise data_error(apath, where, f"expected 10 answers {{'answer': str}}, got {len(answers)}")
        field_of(ann, "multiple_choice_answer", str, apath, where)
        by_id[qid] = ann
    items = []
    seen: set[int] = set()
    for k, q in enumerate(questions["questions"]):
        where = f"questions[{k}]"
        if not isinstance(q, dict):
            raise data_error(qpath, where, "each question must be an object")
        qid = field_of(q, "question_id", int, qpath, where)
        image_id = field_of(q, "image_id", int, qpath, where)
        question = field_of(q, "question", str, qpath, where)
        if qid in seen:
            raise data_error(qpath, where, f"question_id {qid} repeats")
        seen.add(qid)
        if qid not in by_id:
            raise data_error(apath, None, f"no annotation for question_id {qid} ({qpath.name} {where})")
        image = data_dir / VAL_IMAGES / val_image_name(image_id)
        if not image.is_file():
            raise data_error(qpath, where, f"image file {image} does not exist")
        ann = by_id[qid]
        meta = {
            "answers": [a["answer"] for a in ann["answers"]],
            "answer": ann["multiple_choice_answer"],
            "answer_type": str(ann.get("answer_type", "unknown")),
            "question_type": str(ann.get("question_type", "unknown")),
        }
        items.append(EvalItem(qid, with_image(short_answer(question)), image, meta=meta))
    if not items:
        raise data_error(qpath, None, "no questions")
    return items


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    if split == "val":
        return _read_val(data_dir)
    lines = read_question_jsonl(data_dir / TESTDEV_QUESTIONS, data_dir / TEST_IMAGES, "VQAv2 test-dev questions")
    return [EvalItem(q.question_id, with_image(q.text), q.image) for q in lines]


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    if any("answers" not in item.meta for item in items):
        raise EvalDataError(
            "VQAv2 test-dev has no public answers: score split 'val' here, or write a test-dev submission for "
            "the EvalAI server (visualrwkv eval submission)"
        )
    accs = [
        vqa_accuracy(answers[item.key], item.meta["answers"], variant) if item.key in answers else 0.0
        for item in items
    ]
    return Scored(
        score=percent(accs),
        metric="VQA accuracy (%)",
        scorer=VQA_SCORERS[variant],
        n_questions=len(items),
        breakdown={
            # per-type means of each question's score, as vqaEval.py (HEAD) computes them
            "answer_type": group_percent((i.meta["answer_type"], a) for i, a in zip(items, accs)),
            "question_type": group_percent((i.meta["question_type"], a) for i, a in zip(items, accs)),
        },
    )


def write_submission(data_dir: str | Path, predictions: str | Path, out: str | Path) -> int:
    """Write the EvalAI test-dev result file `[{"question_id", "answer"}]`; return the number of entries.

    Answers go through the EvalAI processor, as in LLaVA. A question without a prediction gets "". When the
    full test question file is present every test2015 question is listed, otherwise the test-dev ones.
    """
    data_dir = Path(data_dir)
    items = read(data_dir, "testdev", "bundle")
    answers = match_predictions(items, read_predictions(predictions), predictions, "vqav2 testdev")
    ids: list[str | int] = [item.question_id for item in items]
    full = data_dir / TEST_QUESTIONS
    if full.is_file():
        ids = [field_of(obj, "question_id", (str, int), full, n) for n, obj in iter_jsonl(full, "VQAv2 test questions")]
        dropped = set(answers) - {(str(qid), 0) for qid in ids}
        if dropped:
            raise data_error(full, None, f"lacks {len(dropped)} answered test-dev questions, e.g. {min(dropped)[0]!r}")
    rows = [{"question_id": qid, "answer": evalai_answer(answers.get((str(qid), 0), ""))} for qid in ids]
    with atomic_write(out, "w") as f:
        json.dump(rows, f)
    return len(rows)


def reference_answer(item: EvalItem, correct: bool) -> str:
    return item.meta["answer"] if correct else "wrong answer"


def _question(scene: shapes.Scene, rng: random.Random) -> tuple[str, str, str, str, str]:
    """(question, answer, other plausible answer, answer_type, question_type) about the scene."""
    pick = rng.randrange(3)
    kind_color = shapes.unique_kind(scene)
    if pick == 0 or kind_color is None:
        color, kind = rng.choice([(s.color, s.kind) for s in scene.shapes] + [shapes.absent_object(scene, rng)])
        yes, no = ("yes", "no") if scene.has(color, kind) else ("no", "yes")
        return f"Is there a {color} {kind} in the image?", yes, no, "yes/no", "is there a"
    if pick == 1:
        n = len(scene.shapes)
        return "How many shapes are there?", str(n), str(n + 1), "number", "how many"
    kind, color = kind_color
    other = next(c for c in shapes.COLORS if c != color)
    return f"What color is the {kind}?", color, other, "other", "what color is the"


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    questions, annotations = [], []
    for k in range(n):
        image_id, qid = 100 + k, 1000 + k
        scene = shapes.random_scene(rng)
        shapes.save(scene, out / VAL_IMAGES / val_image_name(image_id))
        question, answer, other, answer_type, question_type = _question(scene, rng)
        # 7 plain + 2 with a period (the official GT punctuation step removes it) + 1 dissenting answer
        raw = [answer] * 7 + [answer + "."] * 2 + [other]
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({
            "question_id": qid, "image_id": image_id, "question_type": question_type, "answer_type": answer_type,
            "multiple_choice_answer": answer,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(raw)],
        })  # fmt: skip
    write_json(out / VAL_QUESTIONS, {"data_subtype": "val2014", "questions": questions})
    write_json(out / VAL_ANNOTATIONS, {"data_subtype": "val2014", "annotations": annotations})
    rows = []
    for k in range(n):
        name = f"COCO_test2015_{200 + k:012d}.jpg"
        scene = shapes.random_scene(rng)
        shapes.save(scene, out / TEST_IMAGES / name)
        question = _question(scene, rng)[0]
        rows.append({"question_id": 2000 + k, "image": name, "text": short_answer(question), "category": "default"})
    write_jsonl(out / TESTDEV_QUESTIONS, rows)


TASK = TaskSpec(
    name="vqav2",
    title="VQAv2",
    layout=LAYOUT,
    splits=("val", "testdev"),
    variants=VQA_VARIANTS,
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
