"""POPE on COCO val2014, three splits (SPEC §10.4); the reported POPE number is F1 averaged over the splits."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, iter_jsonl, write_jsonl
from visualrwkv.eval.items import EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.metrics import binary_metrics
from visualrwkv.eval.parsers import pope_answer
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import read_question_jsonl, short_answer, with_image

QUESTIONS = "llava_pope_test.jsonl"
POPE_SPLITS = ("adversarial", "popular", "random")
IMAGES = "val2014"
LAYOUT = f"{QUESTIONS} (with 'category'), coco/coco_pope_{{{','.join(POPE_SPLITS)}}}.json (labels), {IMAGES}/<image>"


def label_file(data_dir: Path, split: str) -> Path:
    return data_dir / "coco" / f"coco_pope_{split}.json"


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    qpath = data_dir / QUESTIONS
    lines = read_question_jsonl(qpath, data_dir / IMAGES, "POPE questions")
    by_split: dict[str, list] = {}
    for q in lines:
        category = field_of(q.raw, "category", str, qpath, q.line)
        if category not in POPE_SPLITS:
            raise data_error(qpath, q.line, f"category {category!r} is not one of {', '.join(POPE_SPLITS)}")
        by_split.setdefault(category, []).append(q)
    items = []
    for name in POPE_SPLITS:
        questions = by_split.get(name, [])
        lpath = label_file(data_dir, name)
        if not questions:
            if lpath.is_file():
                raise data_error(qpath, None, f"no question has category {name!r}, but {lpath.name} exists")
            continue
        # LLaVA pairs the k-th answer of a split with the k-th label line; the image names must agree
        labels = list(iter_jsonl(lpath, f"POPE {name} labels"))
        if len(labels) != len(questions):
            problem = f"{len(labels)} labels for {len(questions)} {name!r} questions in {qpath.name}"
            raise data_error(lpath, None, problem)
        for q, (line_no, obj) in zip(questions, labels):
            label = field_of(obj, "label", str, lpath, line_no)
            if label not in ("yes", "no"):
                raise data_error(lpath, line_no, f"label must be 'yes' or 'no', got {label!r}")
            image = field_of(obj, "image", str, lpath, line_no)
            if image != q.raw["image"]:
                problem = f"image {image!r} differs from {qpath.name}:{q.line} ({q.raw['image']!r})"
                raise data_error(lpath, line_no, problem)
            items.append(EvalItem(q.question_id, with_image(q.text), q.image, meta={"split": name, "label": label}))
    order = {q.question_id: k for k, q in enumerate(lines)}
    return sorted(items, key=lambda item: order[item.question_id])


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    breakdown: dict[str, dict[str, float]] = {}
    f1s = []
    for name in POPE_SPLITS:
        split_items = [i for i in items if i.meta["split"] == name]
        if not split_items:
            continue
        labels = [i.meta["label"] for i in split_items]
        # a missing prediction counts as the wrong class, so a partial run cannot look better than it is
        preds = [
            pope_answer(answers[i.key]) if i.key in answers else ("no" if i.meta["label"] == "yes" else "yes")
            for i in split_items
        ]
        m = binary_metrics(preds, labels)
        f1s.append(100.0 * m.f1)
        breakdown[name] = {
            "f1": 100.0 * m.f1, "accuracy": 100.0 * m.accuracy, "precision": 100.0 * m.precision,
            "recall": 100.0 * m.recall, "yes_ratio": 100.0 * m.yes_ratio, "n": m.n,
        }  # fmt: skip
    return Scored(
        score=sum(f1s) / len(f1s),
        metric=f"F1 (%) averaged over {len(f1s)} split(s)",
        scorer="LLaVA eval_pope.py parser (first sentence; 'No'/'not'/'no' word -> no, else yes), yes = positive",
        n_questions=len(items),
        breakdown=breakdown,
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    yes = (item.meta["label"] == "yes") == correct
    return "Yes, there is." if yes else "No, there is not."


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    questions = []
    qid = 1
    for name in POPE_SPLITS:
        labels = []
        for k in range(n):
            scene = shapes.random_scene(rng)
            image = f"COCO_val2014_{len(questions) + 1:012d}.jpg"
            shapes.save(scene, out / IMAGES / image)
            present = k % 2 == 0
            color, kind = (scene.shapes[0].color, scene.shapes[0].kind) if present else shapes.absent_object(scene, rng)
            text = f"Is there a {color} {kind} in the image?"
            labels.append({"question_id": k + 1, "image": image, "text": text, "label": "yes" if present else "no"})
            questions.append({"question_id": qid, "image": image, "text": short_answer(text), "category": name})
            qid += 1
        write_jsonl(label_file(out, name), labels)
    write_jsonl(out / QUESTIONS, questions)


TASK = TaskSpec(
    name="pope",
    title="POPE",
    layout=LAYOUT,
    splits=("test",),
    variants=("llava",),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
