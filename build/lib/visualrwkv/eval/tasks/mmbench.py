"""MMBench dev, CircularEval with rule-based answer extraction (SPEC §10.8).

Each question with N options is asked N times with the options rotated (LLaVA `model_vqa_mmbench.py
--all-rounds`); rotations are items sharing the question's index, with `round_id` 0..N-1. A TSV that already
holds VLMEvalKit's circular copies (index + k * 1e6) is used as is, each copy a rotation of `index % 1e6`.
A question scores only if every rotation is answered correctly. There is no GPT judge: an answer the rules of
`parsers.extract_option` cannot map to an option is wrong (VLMEvalKit would ask a judge model instead, so its
numbers can be a little higher for models that answer in free text).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import random
from pathlib import Path
from typing import Mapping, Sequence

from visualrwkv.eval import shapes
from visualrwkv.eval.items import LETTER_ANSWER, LETTER_ANSWER_CN, EvalDataError, EvalItem, ItemKey, Scored, data_error
from visualrwkv.eval.metrics import circular_accuracy
from visualrwkv.eval.parsers import extract_option
from visualrwkv.eval.taskspec import TaskSpec
from visualrwkv.eval.tasks.common import group_percent, percent, with_image

FILES = {"dev": "mmbench_dev_20230712.tsv", "dev_cn": "mmbench_dev_cn_20231003.tsv"}
LETTERS = ("A", "B", "C", "D")  # VisualRWKV renders A-D only
REQUIRED = ("index", "question", "A", "B", "image")
COPY_STRIDE = 1_000_000  # VLMEvalKit's circular copies: index + k * COPY_STRIDE
LAYOUT = f"{FILES['dev']} (split dev) or {FILES['dev_cn']} (split dev_cn): the MMBench TSV with base64 images"


def _is_none(value: str | None) -> bool:
    # LLaVA's is_none: pandas NaN (an empty cell) or the strings "nan"/"none"
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def _decode_image(value: str, path: Path, row: int) -> bytes:
    try:
        data = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise data_error(path, f"row {row}", "column 'image' is not valid base64") from None
    from PIL import Image, UnidentifiedImageError

    try:
        Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError):
        raise data_error(path, f"row {row}", "column 'image' does not decode to an image") from None
    return data


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise EvalDataError(f"{path}: missing MMBench TSV")
    csv.field_size_limit(2**31 - 1)  # base64 images exceed the default 128 KiB field limit
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        for column in REQUIRED:
            if column not in columns:
                raise data_error(path, "line 1", f"missing column {column!r} (columns: {', '.join(columns)})")
        rows = []
        for row_no, row in enumerate(reader, start=1):
            if None in row or any(row.get(c) is None for c in columns):
                raise data_error(path, f"row {row_no}", f"expected {len(columns)} tab-separated fields")
            rows.append((row_no, row))
    if not rows:
        raise data_error(path, None, "no rows")
    return rows


def read(data_dir: Path, split: str, prompt: str) -> list[EvalItem]:
    path = data_dir / FILES[split]
    suffix = LETTER_ANSWER_CN if split == "dev_cn" else LETTER_ANSWER
    rows = _read_rows(path)
    indices: dict[int, int] = {}
    for row_no, row in rows:
        try:
            index = int(row["index"])
        except ValueError:
            raise data_error(path, f"row {row_no}", f"index {row['index']!r} is not an integer") from None
        if index in indices:
            raise data_error(path, f"row {row_no}", f"index {index} repeats row {indices[index]}")
        indices[index] = row_no
    expanded = any(index >= COPY_STRIDE for index in indices)
    images: dict[int, bytes] = {}
    items = []
    for row_no, row in rows:
        index = int(row["index"])
        options = []
        for letter in LETTERS:
            if letter not in row or _is_none(row[letter]):
                break
            options.append(row[letter])
        if len(options) < 2:
            raise data_error(path, f"row {row_no}", "needs at least options A and B")
        answer = None
        if not _is_none(row.get("answer")):
            answer = row["answer"].strip()
            if answer not in LETTERS[: len(options)]:
                raise data_error(path, f"row {row_no}", f"answer {answer!r} is not one of the {len(options)} options")
        image = row["image"].strip()
        if image.isdigit() and len(image) <= 64:  # VLMEvalKit stores a copy's image as its base row's index
            if int(image) not in indices:
                raise data_error(path, f"row {row_no}", f"image refers to index {image}, which is not in the file")
            image = rows[indices[int(image)] - 1][1]["image"].strip()
        if index not in images:
            images[index] = _decode_image(image, path, row_no)
        head = "" if _is_none(row.get("hint")) else f"{row['hint']}\n"
        base = {
            "group": str(index % COPY_STRIDE),
            "category": "unknown" if _is_none(row.get("category")) else row["category"],
            "l2_category": "unknown" if _is_none(row.get("l2-category")) else row["l2-category"],
        }
        rounds = [0] if expanded else range(len(options))
        for r in rounds:
            shown = options[r:] + options[:r]
            letters = LETTERS[: len(shown)]
            body = "".join(f"\n{letter}. {option}" for letter, option in zip(letters, shown))
            meta = dict(base, options=dict(zip(letters, shown)), rotation=index // COPY_STRIDE if expanded else r)
            meta["answer"] = None if answer is None else letters[(LETTERS.index(answer) - r) % len(shown)]
            text = with_image(f"{head}{row['question']}{body}\n{suffix}")
            items.append(EvalItem(index, text, images[index], round_id=r, meta=meta))
    return items


def score(items: Sequence[EvalItem], answers: Mapping[ItemKey, str], variant: str) -> Scored:
    if any(item.meta["answer"] is None for item in items):
        raise EvalDataError("MMBench: some rows have no 'answer' (a test split?); only dev can be scored locally")
    rounds: dict[str, list[bool]] = {}
    first: dict[str, dict] = {}
    single = []
    for item in items:
        pred = extract_option(answers[item.key], item.meta["options"]) if item.key in answers else None
        ok = pred == item.meta["answer"]
        rounds.setdefault(item.meta["group"], []).append(ok)
        first.setdefault(item.meta["group"], item.meta)
        if item.meta["rotation"] == 0:
            single.append(float(ok))
    circular = {group: float(all(v)) for group, v in rounds.items()}
    return Scored(
        score=circular_accuracy(rounds),
        metric="CircularEval accuracy (%): every rotation correct",
        scorer="VLMEvalKit can_infer option extraction (commit e8e78f0; no judge model), CircularEval",
        n_questions=len(rounds),
        breakdown={
            "category": group_percent((first[g]["category"], v) for g, v in circular.items()),
            "l2_category": group_percent((first[g]["l2_category"], v) for g, v in circular.items()),
        },
        extra={"single_pass_accuracy": percent(single)},
    )


def reference_answer(item: EvalItem, correct: bool) -> str:
    letter = item.meta["answer"]
    if not correct:
        return next(other for other in item.meta["options"] if other != letter)
    forms = (letter, f"({letter}) {item.meta['options'][letter]}", item.meta["options"][letter])
    return forms[(int(item.question_id) + item.round_id) % 3]


def write_fixture(out: Path, n: int, rng: random.Random) -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
              "comment", "split"]  # fmt: skip
    for split, name in FILES.items():
        lines = ["\t".join(header)]
        for k in range(n):
            scene = shapes.random_scene(rng)
            present = sorted({s.color for s in scene.shapes})
            absent = [c for c in shapes.COLORS if c not in present]
            color = rng.choice(present)
            options = [color] + rng.sample(absent, min(len(absent), rng.randint(1, 3)))
            rng.shuffle(options)
            cells = options + ["nan"] * (4 - len(options))
            hint = "nan" if k % 2 else "The picture shows simple shapes."
            category = ("color_recognition", "attribute_recognition")[k % 2]
            image = base64.b64encode(shapes.png_bytes(scene)).decode("ascii")
            row = [str(k), "Which color appears in the image?", hint, *cells, LETTERS[options.index(color)], category,
                   image, "fixture", "perception", "nan", split]  # fmt: skip
            lines.append("\t".join(row))
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


TASK = TaskSpec(
    name="mmbench",
    title="MMBench",
    layout=LAYOUT,
    splits=("dev", "dev_cn"),
    variants=("circular-rule",),
    read=read,
    score=score,
    write_fixture=write_fixture,
    reference_answer=reference_answer,
)
