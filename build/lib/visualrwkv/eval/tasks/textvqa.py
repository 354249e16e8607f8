"""TextVQA val (SPEC §10.3): EvalAI processor on prediction and GT answers, 10-choose-9 soft accuracy.

LLaVA's question file keys lines by *image* id (several questions share one), so questions are joined to
`TextVQA_0.5.1_val.json` on (image id, question.lower()) and items take the annotation's unique question_id.
Predictions keyed LLaVA's way are still accepted when they carry the prompt (`recover_question`).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, read_json, write_json, write_jsonl
from visualrwkv.eval.items import IMAGE_TOKEN, SHORT_ANSWER, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.predictions import Prediction, Resolver
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import percent, read_question_jsonl, short_answer, with_image
from visualrwkv.eval.vqa_accuracy import VQA_SCORERS, vqa_accuracy

QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATIONS = "TextVQA_0.5.1_val.json"
IMAGES = "train_images"
OCR_PREFIX = "Reference OCR token:"
# llava: the bundle's text as is ({q}\nReference OCR token: {ocr}\n{suffix}); none: no OCR line;
# before: the OCR line first, which suits an RNN better (Cobra §4.1, SPEC §10.1)
PROMPTS = ("llava", "none", "before")
LAYOUT = f"{QUESTIONS} (LLaVA, with OCR tokens), {ANNOTATIONS}, {IMAGES}/<image>; prompts: {', '.join(PROMPTS)}"


def split_llava_text(text: str) -> tuple[str, str | None]:
    """(question, OCR line or None) from a LLaVA TextVQA prompt."""
    lines = [line for line in text.split("\n") if line.strip() and line.strip() != SHORT_ANSWER]
    ocr = next((line for line in lines if line.startswith(OCR_PREFIX)), None)
    question = next((line for line in lines if not line.startswith(OCR_PREFIX)), "")
    return question, ocr


def render(text: str, prompt: str) -> str:
    if prompt == "llava":
        return text
    question, ocr = split_llava_text(text)
    if prompt == "none" or ocr is None:
        return short_answer(question)
    return f"{ocr}\n{short_answer(question)}"


def recover_question(prompt: str) -> str | None:
    """The question inside a rendered prompt (SPEC §10.3), or None when the prompt has no known shape.

    VisualRWKV prompts: `User: <image>\\n...` -> line 2; `...\\n<image>\\n\\nAssistant:` -> line 1 minus `User: `;
    otherwise (sandwich) the first line after `\\n<image>\\n`. Then LLaVA's raw question-file prompts.
    """
    image_line = f"\n{IMAGE_TOKEN}\n"
    lines = prompt.split("\n")
    if prompt.startswith(f"User: {IMAGE_TOKEN}\n"):
        return lines[1] if len(lines) > 1 else None
    if prompt.endswith(f"{image_line}\nAssistant:"):
        return lines[0].removeprefix("User: ")
    if image_line in prompt:
        return prompt.split(image_line, 1)[1].split("\n", 1)[0]
    # LLaVA eval_textvqa.py prompt_processor, for answer files written by LLaVA
    if OCR_PREFIX + " " in prompt and len(lines) == 3:
        return lines[1] if prompt.startswith(OCR_PREFIX) else lines[0]
    if len(lines) == 2:
        return lines[0]
    return None


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    lines = read_question_jsonl(data_dir / QUESTIONS, data_dir / IMAGES, "TextVQA questions", unique_ids=False)
    apath = data_dir / ANNOTATIONS
    doc = read_json(apath, "TextVQA annotations")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise data_error(apath, None, "expected an object with a 'data' list")
    by_question: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for k, ann in enumerate(doc["data"]):
        where = f"data[{k}]"
        if not isinstance(ann, dict):
            raise data_error(apath, where, "each annotation must be an object")
        image_id = field_of(ann, "image_id", str, apath, where)
        question = field_of(ann, "question", str, apath, where)
        field_of(ann, "question_id", (int, str), apath, where)
        answers = field_of(ann, "answers", list, apath, where)
        if len(answers) != 10 or not all(isinstance(a, str) for a in answers):
            raise data_error(apath, where, f"expected 10 string answers, got {len(answers)}")
        by_question[(image_id, question.lower())].append(ann)
    items = []
    for q in lines:
        question, _ = split_llava_text(q.text)
        candidates = by_question.get((q.image.stem, question.lower()))
        if not candidates:
            raise data_error(data_dir / QUESTIONS, q.line, f"no annotation in {ANNOTATIONS} for image "
                             f"{q.image.stem!r} and question {question!r}")  # fmt: skip
        ann = candidates.pop(0)  # repeated (image, question) pairs pair up in file order
        meta = {
            "answers": list(ann["answers"]),
            "answer": Counter(ann["answers"]).most_common(1)[0][0],
            "image_id": q.image.stem,
            "question": question,
        }
        items.append(EvalItem(ann["question_id"], with_image(render(q.text, prompt)), q.image, meta=meta))
    return items


def resolver(items: Sequence[EvalItem]) -> Resolver:
    """Map a LLaVA-style prediction (question_id = image id, with its prompt) to the matching item."""
    by_question: dict[tuple[str, str], list[ItemKey]] = defaultdict(list)
    for item in items:
        by_question[(item.meta["image_id"], item.meta["question"].lower())].append(item.key)
    used: set[ItemKey] = set()

    def resolve(pred: Prediction) -> ItemKey | None:
        question = recover_question(pred.prompt) if pred.prompt is not None else None
        if question is None:
            return None
        for key in by_question.get((str(pred.question_id), question.lower()), []):
            if key not in used:
                used.add(key)
                return key
        return None

    return resolve


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    accs = [vqa_accuracy(answers[i.key], i.meta["answers"], "evalai") if i.key in answers else 0.0 for i in items]
    return Scored(
        score=percent(accs),
        metric="VQA accuracy (%)",
        scorer="LLaVA m4c TextVQAAccuracyEvaluator: " + VQA_SCORERS["evalai"],
        n_questions=len(items),
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    return item.meta["answer"] if correct else "wrong answer"


WORDS = ("CAT", "SUN", "BUS", "STOP", "OPEN", "TAXI")


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    rows, data = [], []
    for k in range(n):
        image_id = f"{k:04x}a8ae2ef43b9"
        word = rng.choice(WORDS)
        scene = shapes.random_scene(rng, word=word)
        shapes.save(scene, out / IMAGES / f"{image_id}.jpg")
        shape = scene.shapes[0]
        questions = [
            ("what word is written in the image?", word.lower(), [word.lower()] * 8 + [word, "unanswerable"]),
            (f"is there a {shape.kind}?", "yes", ["yes"] * 9 + ["Yes!"]),
        ]
        for j, (question, answer, answers) in enumerate(questions):
            ocr = "" if (k, j) == (0, 1) else f"\n{OCR_PREFIX} {word.lower()}, {rng.choice(WORDS).lower()}"
            # LLaVA keys its lines by image id, so two lines share one question_id
            text = f"{question}{ocr}\n{SHORT_ANSWER}"
            rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
            data.append({"question": question, "image_id": image_id, "question_id": 30000 + 2 * k + j,
                         "answers": answers, "set_name": "val"})  # fmt: skip
    write_jsonl(out / QUESTIONS, rows)
    write_json(out / ANNOTATIONS, {"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})


TASK = TaskSpec(
    name="textvqa",
    title="TextVQA",
    layout=LAYOUT,
    splits=("val",),
    variants=("evalai",),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
    prompts=PROMPTS,
    resolver=resolver,
)
