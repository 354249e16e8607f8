"""MME (SPEC §10.7): 14 yes/no subtasks; subtask score = acc + acc+; perception = sum of 10, cognition = sum of 4.

Ground truth comes from the official release folders. Prompts come from LLaVA's `llava_mme.jsonl` when it is
present (joined on subtask, image and question as LLaVA's `convert_answer_to_mme.py` does), otherwise from the
questions in the folders. Item ids are `<LLaVA question_id>#<k>`, k = the question's line in its .txt file,
because LLaVA's ids name the image, which carries two questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.files import field_of, image_file, iter_jsonl, require_dir, write_jsonl
from visualrwkv.eval.items import SHORT_ANSWER, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.metrics import MME_COGNITION, MME_PERCEPTION, mme_subtask
from visualrwkv.eval.parsers import mme_answer
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import with_image

RELEASE = "MME_Benchmark_release_version"
QUESTIONS = "llava_mme.jsonl"
YES_NO = "Please answer yes or no."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# subtasks whose release folder splits into images/ and questions_answers_YN/; the others keep both side by side
NESTED = ("artwork", "celebrity", "landmark", "posters", "scene")
LAYOUT = (
    f"{RELEASE}/<subtask>/ (the official release: <name>.jpg|.png + <name>.txt, or images/ + "
    f"questions_answers_YN/); optional {QUESTIONS} (LLaVA prompts)"
)


@dataclass(frozen=True)
class _Truth:
    subtask: str
    image: Path
    questions: tuple[tuple[str, str], ...]  # (question, "yes"|"no") in file order


def _ground_truth(root: Path) -> dict[tuple[str, str], _Truth]:
    """(subtask, image stem) -> truth, for every question file of the release."""
    require_dir(root, "MME release folder")
    truth: dict[tuple[str, str], _Truth] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        subtask = folder.name
        if subtask not in MME_PERCEPTION + MME_COGNITION:
            raise data_error(folder, None, f"unknown MME subtask {subtask!r}")
        nested = (folder / "images").is_dir()
        image_dir = folder / "images" if nested else folder
        qa_dir = folder / "questions_answers_YN" if nested else folder
        require_dir(qa_dir, f"MME {subtask} question folder")
        images_by_stem: dict[str, list[Path]] = {}
        for path in image_dir.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images_by_stem.setdefault(path.stem, []).append(path)
        for txt in sorted(qa_dir.glob("*.txt")):
            images = images_by_stem.get(txt.stem, [])
            if len(images) != 1:
                problem = f"expected one image named {txt.stem}.* in {image_dir}, found {len(images)}"
                raise data_error(txt, None, problem)
            questions = []
            for line_no, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    raise data_error(txt, line_no, "expected 'question<TAB>Yes|No'")
                questions.append((parts[0], parts[1].strip().lower()))
            if not questions:
                raise data_error(txt, None, "no questions")
            truth[(subtask, txt.stem)] = _Truth(subtask, images[0], tuple(questions))
    if not truth:
        raise data_error(root, None, "no MME questions found")
    return truth


def llava_question_index(text: str, questions: Sequence[str]) -> int | None:
    """Which of an image's release questions a LLaVA prompt asks (None if none)."""
    # LLaVA convert_answer_to_mme.py: drop the short-answer phrase, then add " Please answer yes or no." when
    # absent, with the release's double-space spelling as a second try
    prompt = text.replace(SHORT_ANSWER, "").strip() if SHORT_ANSWER in text else text
    tries = [prompt]
    if YES_NO not in prompt:
        tries = [f"{prompt} {YES_NO}", f"{prompt}  {YES_NO}"]
    for candidate in tries:
        if candidate in questions:
            return questions.index(candidate)
    return None


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    root = data_dir / RELEASE
    truth = _ground_truth(root)
    qpath = data_dir / QUESTIONS
    if not qpath.is_file():
        return [
            EvalItem(f"{t.image.relative_to(root).as_posix()}#{k}", with_image(q), t.image,
                     meta={"subtask": t.subtask, "image_key": key[1], "answer": a})  # fmt: skip
            for key, t in truth.items()
            for k, (q, a) in enumerate(t.questions)
        ]
    items, covered = [], {}
    for line_no, obj in iter_jsonl(qpath, "MME LLaVA questions"):
        qid = field_of(obj, "question_id", str, qpath, line_no)
        text = field_of(obj, "text", str, qpath, line_no)
        key = (qid.split("/")[0], qid.split("/")[-1].split(".")[0])
        t = truth.get(key)
        k = llava_question_index(text, [q for q, _ in t.questions]) if t else None
        if t is None or k is None:
            raise data_error(qpath, line_no, f"no question in {RELEASE}/{key[0]} for image {key[1]!r} matches {text!r}")
        if (key, k) in covered:
            raise data_error(qpath, line_no, f"asks the same question as line {covered[(key, k)]}")
        covered[(key, k)] = line_no
        image = image_file(root, field_of(obj, "image", str, qpath, line_no), qpath, line_no)
        meta = {"subtask": t.subtask, "image_key": key[1], "answer": t.questions[k][1]}
        items.append(EvalItem(f"{qid}#{k}", with_image(text), image, meta=meta))
    n_truth = sum(len(t.questions) for t in truth.values())
    if len(items) != n_truth:
        raise data_error(qpath, None, f"covers {len(items)} of the {n_truth} questions in {RELEASE}")
    return items


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    outcomes: dict[str, list[tuple[str, bool]]] = {}
    for item in items:
        pred = mme_answer(answers[item.key]) if item.key in answers else "other"
        outcomes.setdefault(item.meta["subtask"], []).append((item.meta["image_key"], pred == item.meta["answer"]))
    subtasks = {name: mme_subtask(outcomes[name]) for name in MME_PERCEPTION + MME_COGNITION if name in outcomes}
    perception = {n: s.score for n, s in subtasks.items() if n in MME_PERCEPTION}
    cognition = {n: s.score for n, s in subtasks.items() if n in MME_COGNITION}
    return Scored(
        score=sum(perception.values()),
        metric=f"perception: sum of acc + acc+ over {len(perception)} subtask(s) (max {200 * len(perception)})",
        scorer="lmms-eval parse_pred_ans (yes/no/other); acc + acc+ per subtask (MME eval_tool)",
        n_questions=len(items),
        breakdown={
            "perception": perception,
            "cognition": cognition,
            "acc": {n: s.acc for n, s in subtasks.items()},
            "acc_plus": {n: s.acc_plus for n, s in subtasks.items()},
        },
        extra={"cognition": sum(cognition.values()), "total": sum(perception.values()) + sum(cognition.values())},
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    yes = (item.meta["answer"] == "yes") == correct
    return "Yes" if yes else "No"


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    root = out / RELEASE
    rows = []
    for index, subtask in enumerate(MME_PERCEPTION + MME_COGNITION):
        nested = subtask in NESTED
        image_dir = root / subtask / "images" if nested else root / subtask
        qa_dir = root / subtask / "questions_answers_YN" if nested else root / subtask
        for k in range(n):
            name = f"{k:04d}" + (".jpg" if index % 2 else ".png")
            scene = shapes.random_scene(rng)
            shapes.save(scene, image_dir / name)
            present, absent = (scene.shapes[0].color, scene.shapes[0].kind), shapes.absent_object(scene, rng)
            pairs = [(f"Is there a {c} {kind} in the image?", a) for (c, kind), a in ((present, "Yes"), (absent, "No"))]
            qa_dir.mkdir(parents=True, exist_ok=True)
            (qa_dir / f"{k:04d}.txt").write_text("".join(f"{q} {YES_NO}\t{a}\n" for q, a in pairs), encoding="utf-8")
            rel = (image_dir / name).relative_to(root).as_posix()
            for q, _ in pairs:
                # half the subtasks use LLaVA's short-answer phrasing, which the join must undo
                text = f"{q}\n{SHORT_ANSWER}" if index % 2 else f"{q} {YES_NO}"
                rows.append({"question_id": rel, "image": rel, "text": text, "category": subtask})
    write_jsonl(out / QUESTIONS, rows)


TASK = TaskSpec(
    name="mme",
    title="MME",
    layout=LAYOUT,
    splits=("test",),
    variants=("lmms-eval",),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
