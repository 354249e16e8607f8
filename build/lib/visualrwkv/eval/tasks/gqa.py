"""GQA test-dev balanced, the standard scorer (SPEC §10.6): `text.rstrip('.').lower()` must equal the answer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import read_json, write_json, write_jsonl
from visualrwkv.eval.items import EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import group_percent, percent, read_question_jsonl, short_answer, with_image

QUESTIONS = "llava_gqa_testdev_balanced.jsonl"
ANSWERS = "data/testdev_balanced_questions.json"
IMAGES = "data/images"
LAYOUT = f"{QUESTIONS}, {ANSWERS} (the official GQA file), {IMAGES}/<image>"


def normalize(text: str) -> str:
    """LLaVA `convert_gqa_for_eval.py`; official eval.py then compares exactly."""
    return text.rstrip(".").lower()


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    lines = read_question_jsonl(data_dir / QUESTIONS, data_dir / IMAGES, "GQA questions", image_lists=True)
    gt_path = data_dir / ANSWERS
    gt = read_json(gt_path, "GQA test-dev balanced questions")
    if not isinstance(gt, dict):
        raise data_error(gt_path, None, "expected an object keyed by question id")
    items = []
    for q in lines:
        entry = gt.get(str(q.question_id))
        if not isinstance(entry, dict) or not isinstance(entry.get("answer"), str):
            raise data_error(gt_path, None, f"no answer for question_id {q.question_id!r} ({QUESTIONS}:{q.line})")
        types = entry.get("types") if isinstance(entry.get("types"), dict) else {}
        meta = {
            "answer": entry["answer"],
            "structural": str(types.get("structural", "unknown")),
            "semantic": str(types.get("semantic", "unknown")),
        }
        items.append(EvalItem(q.question_id, with_image(q.text, q.image), q.image, meta=meta))
    return items


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    hits = [float(item.key in answers and normalize(answers[item.key]) == item.meta["answer"]) for item in items]
    return Scored(
        score=percent(hits),
        metric="accuracy (%)",
        scorer="LLaVA convert_gqa_for_eval (rstrip('.').lower()) + exact match with the answer (official eval.py)",
        n_questions=len(items),
        breakdown={
            kind: group_percent((i.meta[kind], h) for i, h in zip(items, hits)) for kind in ("structural", "semantic")
        },
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    answer = item.meta["answer"]
    if correct:
        return answer.capitalize() + "."  # exercises the normalisation
    return {"yes": "no", "no": "yes"}.get(answer, "wrong")


def write_fixture(out: Path, n: int, rng: random.Random, images: int = 1) -> None:
    if images > 1:
        return _write_multi_image_fixture(out, n, rng, images)
    rows, gt = [], {}
    for k in range(n):
        scene = shapes.random_scene(rng)
        name = f"n{k:06d}.jpg"
        shapes.save(scene, out / IMAGES / name)
        kind_color = shapes.unique_kind(scene)
        if k % 2 == 0 or kind_color is None:
            first = scene.shapes[0]
            color, kind = shapes.absent_object(scene, rng) if k % 4 == 0 else (first.color, first.kind)
            question, answer = f"Is there a {color} {kind}?", "yes" if scene.has(color, kind) else "no"
            types = {"structural": "verify", "semantic": "obj", "detailed": "existC"}
        else:
            kind, color = kind_color
            question, answer = f"What color is the {kind}?", color
            types = {"structural": "query", "semantic": "attr", "detailed": "color"}
        qid = f"{20000000 + k}"
        rows.append({"question_id": qid, "image": name, "text": short_answer(question), "category": "default"})
        gt[qid] = {"imageId": name[:-4], "question": question, "answer": answer, "types": types, "isBalanced": True}
    write_jsonl(out / QUESTIONS, rows)
    write_json(out / ANSWERS, gt)


def _write_multi_image_fixture(out: Path, n: int, rng: random.Random, images: int) -> None:
    """`images` scenes per question (`"image": [a, b, ...]`), asked whether a shape is in any of them."""
    rows, gt = [], {}
    for k in range(n):
        scenes = [shapes.random_scene(rng) for _ in range(images)]
        names = [f"n{k:06d}_{j}.jpg" for j in range(images)]
        for scene, name in zip(scenes, names):
            shapes.save(scene, out / IMAGES / name)
        color, kind = (scenes[k % images].shapes[0].color, scenes[k % images].shapes[0].kind) if k % 2 == 0 else \
            shapes.absent_object(shapes.Scene(tuple(s for scene in scenes for s in scene.shapes)), rng)
        question = f"Is there a {color} {kind} in these images?"
        answer = "yes" if any(scene.has(color, kind) for scene in scenes) else "no"
        qid = f"{20000000 + k}"
        rows.append({"question_id": qid, "image": names, "text": short_answer(question), "category": "default"})
        gt[qid] = {"imageId": names[0][:-4], "question": question, "answer": answer, "isBalanced": True,
                   "types": {"structural": "verify", "semantic": "obj", "detailed": "existC"}}
    write_jsonl(out / QUESTIONS, rows)
    write_json(out / ANSWERS, gt)


TASK = TaskSpec(
    name="gqa",
    title="GQA",
    layout=LAYOUT,
    splits=("testdev_balanced",),
    variants=("llava",),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
