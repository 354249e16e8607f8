"""The synthetic "shapes" dataset: small images of 1–3 colored shapes with captions and questions.

It trains the tiny model that ships with the repo, so every answer must be recoverable from the
pixels alone: each (color, shape) pair occurs at most once per scene, so "the red circle" always
names one object; shapes never overlap; a question about a relation is only asked when the two
bounding boxes are clearly apart on the axis asked. Output is LLaVA conversation JSON (SPEC §8.4):
stage1.json (captions), stage2.json (one question per row), test.json (held-out images), and
stage2_multiturn.json / test_multiturn.json: the same questions, each image's as one conversation
(every question after the first is a follow-up), and stage3_questions.json: a sixth of stage2.json's
rows, drawn at random, which the tiny recipe's conversation stage mixes in.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visualrwkv.utils import atomic_write

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (34, 150, 60),
    "blue": (38, 84, 220),
    "yellow": (232, 196, 20),
    "purple": (135, 55, 185),
    "orange": (245, 128, 24),
}
KINDS = ("circle", "square", "triangle")
QUESTION_TYPES = ("color", "shape", "count", "position", "existence")
ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

# geometry, as fractions of the image side
MIN_HALF, MAX_HALF = 0.11, 0.16  # half the side of a shape's bounding square: 14–20 px at 64 px
BORDER = 0.03  # shapes stay this far from the image edge
SEPARATION = 0.06  # every two shapes are at least this far apart on the x or y axis (~4 px at 64 px)
SIDE_MARGIN = 0.02  # "left half" means the whole shape is at least this far left of the middle
SUPERSAMPLE = 4  # draw larger and downscale, for anti-aliased edges

COLOR_QUESTIONS = ("What color is the {}?", "What is the color of the {}?", "Which color is the {}?")
SHAPE_QUESTIONS = ("What shape is the {} object?", "What is the shape of the {} object?", "Which shape is {}?")
COUNT_ALL_QUESTIONS = ("How many shapes are there?", "How many shapes are in the image?", "How many objects are there?")
EXISTENCE_QUESTIONS = ("Is there {}?", "Is there {} in the image?", "Does the image contain {}?")
LEFT_RIGHT_QUESTIONS = (
    "Which side of the image is the {} on, left or right?",
    "Is the {} on the left or right side of the image?",
)
TOP_BOTTOM_QUESTIONS = (
    "Is the {} in the top or bottom half of the image?",
    "Is the {} near the top or the bottom of the image?",
)
CAPTION_REQUESTS = (
    "Describe the image briefly.",
    "What shapes are in this image?",
    "Give a short caption for this picture.",
    "List the objects in the image.",
    "Write a brief description of the image.",
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    x: float  # centre; 0 = left edge, 1 = right edge
    y: float  # centre; 0 = top edge, 1 = bottom edge
    half: float  # half the side of the bounding square

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom)."""
        return (self.x - self.half, self.y - self.half, self.x + self.half, self.y + self.half)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"background": list(self.background), "shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Shape(**s) for s in d["shapes"]), tuple(d["background"]))


def apart_on_axis(a: Shape, b: Shape, axis: str) -> int:
    """-1 if a's box ends SEPARATION before b's starts on `axis` ("x" or "y"), +1 if after, else 0."""
    lo, hi = (0, 2) if axis == "x" else (1, 3)
    if a.box[hi] + SEPARATION <= b.box[lo]:
        return -1
    if b.box[hi] + SEPARATION <= a.box[lo]:
        return 1
    return 0


def half_of_image(shape: Shape, axis: str) -> int:
    """-1 if the whole shape lies in the left (top) half, +1 right (bottom) half, 0 if it straddles."""
    lo, hi = (0, 2) if axis == "x" else (1, 3)
    if shape.box[hi] <= 0.5 - SIDE_MARGIN:
        return -1
    if shape.box[lo] >= 0.5 + SIDE_MARGIN:
        return 1
    return 0


MAX_SHAPES = 6  # the most shapes a scene may hold (the harder variant's; the shipped data has 1–3)


def check_scene_options(min_shapes: int, max_shapes: int, shape_scale: float) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (min_shapes, max_shapes)) \
            or not 1 <= min_shapes <= max_shapes <= MAX_SHAPES:
        raise ValueError(f"need integers 1 <= min_shapes <= max_shapes <= {MAX_SHAPES}, got {min_shapes!r}, "
                         f"{max_shapes!r}")
    if not isinstance(shape_scale, (int, float)) or not 0.5 <= shape_scale <= 1.0:
        raise ValueError(f"shape_scale must be in [0.5, 1], got {shape_scale!r}")


def random_scene(rng: np.random.Generator, num_shapes: int | None = None, *, min_shapes: int = 1,
                 max_shapes: int = 3, shape_scale: float = 1.0) -> Scene:
    """`min_shapes`–`max_shapes` shapes (1–3 by default) with distinct (color, kind), no two
    overlapping, on a light background; `shape_scale` shrinks them (more fit in the image)."""
    check_scene_options(min_shapes, max_shapes, shape_scale)
    if num_shapes is None:
        num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    if not 1 <= num_shapes <= max_shapes:
        raise ValueError(f"num_shapes must be in [1, {max_shapes}], got {num_shapes}")
    pairs = [(c, k) for c in COLORS for k in KINDS]
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=num_shapes, replace=False)]
    background = tuple(int(v) for v in rng.integers(218, 251, size=3))
    while True:  # placing a few small shapes rarely needs more than a few tries
        shapes: list[Shape] = []
        for color, kind in chosen:
            for _ in range(50):
                half = float(rng.uniform(MIN_HALF, MAX_HALF)) * shape_scale
                x, y = rng.uniform(half + BORDER, 1 - half - BORDER, size=2)
                cand = Shape(kind, color, float(x), float(y), half)
                if all(apart_on_axis(cand, s, "x") or apart_on_axis(cand, s, "y") for s in shapes):
                    shapes.append(cand)
                    break
            else:
                break
        if len(shapes) == num_shapes:
            return Scene(tuple(shapes), background)


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    size = image_size * SUPERSAMPLE
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        left, top, right, bottom = (v * size for v in s.box)
        fill = COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif s.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
        else:
            raise ValueError(f"unknown shape kind {s.kind!r}")
    return img.resize((image_size, image_size), Image.Resampling.BOX)


# ---------------------------------------------------------------- language


def with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def quadrant(shape: Shape) -> str:
    """Where the shape's centre is: "top left", "bottom right", ..."""
    return ("top" if shape.y < 0.5 else "bottom") + (" left" if shape.x < 0.5 else " right")


def caption(scene: Scene) -> str:
    """"A red circle at the top left and a blue square at the bottom right.": from left to right.

    Every caption says where each shape is, so stage 1 teaches, densely, which tokens of the image
    belong to which object and where that object is (the questions give one word of it at a time).
    """
    names = [f"{with_article(s.name)} at the {quadrant(s)}" for s in sorted(scene.shapes, key=lambda s: s.x)]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    question_type: str


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


def ask_color(scene: Scene, rng, want_yes: bool) -> QA | None:
    kinds = [s.kind for s in scene.shapes]
    unique = [s for s in scene.shapes if kinds.count(s.kind) == 1]
    if not unique:
        return None
    s = _pick(rng, unique)
    return QA(_pick(rng, COLOR_QUESTIONS).format(s.kind), s.color.capitalize(), "color")


def ask_shape(scene: Scene, rng, want_yes: bool) -> QA | None:
    colors = [s.color for s in scene.shapes]
    unique = [s for s in scene.shapes if colors.count(s.color) == 1]
    if not unique:
        return None
    s = _pick(rng, unique)
    return QA(_pick(rng, SHAPE_QUESTIONS).format(s.color), s.kind.capitalize(), "shape")


def ask_count(scene: Scene, rng, want_yes: bool) -> QA:
    roll = rng.random()
    if roll < 0.4:
        question, n = _pick(rng, COUNT_ALL_QUESTIONS), len(scene.shapes)
    elif roll < 0.7:
        kind = _pick(rng, KINDS)
        question, n = f"How many {kind}s are there?", sum(s.kind == kind for s in scene.shapes)
    else:
        # a color that is present, most of the time, so "0" does not dominate
        color = _pick(rng, [s.color for s in scene.shapes] if rng.random() < 0.75 else list(COLORS))
        question, n = f"How many {color} shapes are there?", sum(s.color == color for s in scene.shapes)
    return QA(question, str(n), "count")


def ask_existence(scene: Scene, rng, want_yes: bool) -> QA:
    present = {(s.color, s.kind) for s in scene.shapes}
    if want_yes:
        color, kind = _pick(rng, sorted(present))
    else:
        absent = [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
        # hard negatives share a color or a kind with a present shape, so binding is what is tested
        hard = [p for p in absent if any(p[0] == c or p[1] == k for c, k in present)]
        color, kind = _pick(rng, hard if hard and rng.random() < 0.6 else absent)
    return QA(_pick(rng, EXISTENCE_QUESTIONS).format(with_article(f"{color} {kind}")), _yes_no(want_yes), "existence")


RELATION_QUESTIONS = {
    "x": ("Is the {} to the left or to the right of the {}?", "Is the {} left or right of the {}?"),
    "y": ("Is the {} above or below the {}?",),
}
RELATION_ANSWERS = {("x", -1): "Left", ("x", 1): "Right", ("y", -1): "Above", ("y", 1): "Below"}


def ask_position(scene: Scene, rng, want_yes: bool) -> QA | None:
    """A relation between two shapes (GQA-style: "Is A to the left or to the right of B?"), or which
    half of the image a shape is in; only asked where the answer is clear-cut."""
    pairs = [
        (a, b, axis, side)
        for a in scene.shapes
        for b in scene.shapes
        if a is not b
        for axis in ("x", "y")
        if (side := apart_on_axis(a, b, axis))
    ]
    sides = [(s, axis, h) for s in scene.shapes for axis in ("x", "y") if (h := half_of_image(s, axis))]
    if pairs and (not sides or rng.random() < 0.75):
        a, b, axis, side = _pick(rng, pairs)
        question = _pick(rng, RELATION_QUESTIONS[axis]).format(a.name, b.name)
        return QA(question, RELATION_ANSWERS[(axis, side)], "position")
    if sides:
        s, axis, half = _pick(rng, sides)
        if axis == "x":
            template = _pick(rng, LEFT_RIGHT_QUESTIONS)
            answer = "Left" if half < 0 else "Right"
        else:
            template = _pick(rng, TOP_BOTTOM_QUESTIONS)
            answer = "Top" if half < 0 else "Bottom"
        return QA(template.format(s.name), answer, "position")
    return None


CORNER_QUESTIONS = ("In which corner of the image is the {}?", "Which corner is the {} in?")
CORNER_MARGIN = 0.1  # the centre at least this far from both middle lines: the corner is clear-cut


def ask_corner(scene: Scene, rng, want_yes: bool) -> QA | None:
    """Which corner a shape is in ("Top left"): a question type the shipped model never saw, for
    fine-tuning experiments (`extra_types`; docs/training.md). Its captions say the same in words."""
    clear = [s for s in scene.shapes if min(abs(s.x - 0.5), abs(s.y - 0.5)) >= CORNER_MARGIN]
    if not clear:
        return None
    s = _pick(rng, clear)
    return QA(_pick(rng, CORNER_QUESTIONS).format(s.name), quadrant(s).capitalize(), "corner")


FIND_QUESTIONS = {
    ("x", -1): "What color is the {} to the left of the {}?",
    ("x", 1): "What color is the {} to the right of the {}?",
    ("y", -1): "What color is the {} above the {}?",
    ("y", 1): "What color is the {} below the {}?",
}
EXTREME_QUESTIONS = {("x", -1): "leftmost", ("x", 1): "rightmost", ("y", -1): "topmost", ("y", 1): "bottommost"}


def ask_find(scene: Scene, rng, want_yes: bool) -> QA | None:
    """A question answered only by finding one object from another ("What color is the circle to the
    left of the red square?") or by comparing all of them ("What color is the leftmost shape?"): the
    harder variant's type, where what the question asks for decides which patches matter. Asked only
    where one object fits clearly: every other shape of the kind asked is clearly on the other side."""
    found = []
    for ref in scene.shapes:
        for axis in ("x", "y"):
            for side in (-1, 1):
                same = {}
                for s in scene.shapes:
                    if s is not ref:
                        same.setdefault(s.kind, []).append(apart_on_axis(s, ref, axis))
                for kind, sides in same.items():
                    if sides.count(side) == 1 and all(v == -side for v in sides if v != side):
                        target = next(s for s in scene.shapes if s is not ref and s.kind == kind
                                      and apart_on_axis(s, ref, axis) == side)
                        found.append(QA(FIND_QUESTIONS[(axis, side)].format(kind, ref.name),
                                        target.color.capitalize(), "find"))
    extremes = []
    if len(scene.shapes) >= 2:
        for axis in ("x", "y"):
            for side in (-1, 1):
                # the extreme shape must be clearly apart from every other one on that axis
                for s in scene.shapes:
                    if all(apart_on_axis(s, o, axis) == side for o in scene.shapes if o is not s):
                        extremes.append(QA(f"What color is the {EXTREME_QUESTIONS[(axis, side)]} shape?",
                                           s.color.capitalize(), "find"))
    if found and (not extremes or rng.random() < 0.7):
        return _pick(rng, found)
    return _pick(rng, extremes) if extremes else None


# the harder variant of the data (visualrwkv ablate): more and smaller objects, counts up to 6, and
# questions that need one object found from another, so that where the model reads the question
# and how it scans the image can matter
HARDER = dict(min_shapes=2, max_shapes=6, shape_scale=0.75, extra_types=("find",))

# question types that the shipped data does not ask (a dataset asks them only when told to)
EXTRA_QUESTION_TYPES = ("corner", "find")

ASKERS = {
    "color": ask_color,
    "shape": ask_shape,
    "count": ask_count,
    "position": ask_position,
    "existence": ask_existence,
    "corner": ask_corner,
    "find": ask_find,
}


# Training asks position questions twice as often as the others: comparing two objects is what the
# tiny model learns last. The held-out split stays balanced.
TRAIN_TYPE_WEIGHTS = {"position": 2.0}


class QuestionBalancer:
    """Chooses question types and yes/no answers so that both stay balanced over a split.

    Per image, types are tried least-used first (counts divided by the type's weight, 1 by default);
    a yes/no question asks for whichever answer its type has given less often. Types a scene cannot
    support are skipped, so counts differ by at most a little.
    """

    def __init__(self, weights: dict[str, float] | None = None, types: tuple[str, ...] = QUESTION_TYPES) -> None:
        self.types = tuple(types)
        self.weights = {t: 1.0 for t in self.types} | dict(weights or {})
        self.type_counts = {t: 0 for t in self.types}
        self.yes_no = {t: {"Yes": 0, "No": 0} for t in self.types}

    def questions(self, scene: Scene, rng: np.random.Generator, n: int) -> list[QA]:
        order = sorted(self.types, key=lambda t: (self.type_counts[t] / self.weights[t], rng.random()))
        out: list[QA] = []
        for qtype in order:
            if len(out) == n:
                break
            yn = self.yes_no[qtype]
            want_yes = yn["Yes"] < yn["No"] or (yn["Yes"] == yn["No"] and rng.random() < 0.5)
            qa = ASKERS[qtype](scene, rng, want_yes)
            if qa is None:
                continue
            out.append(qa)
            self.type_counts[qtype] += 1
            if qa.answer in yn:
                yn[qa.answer] += 1
        return out


# ---------------------------------------------------------------- dataset files


def _conversation(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\n" + human}, {"from": "gpt", "value": gpt}]


def _scene_signature(scene: Scene, image_size: int) -> tuple:
    """What makes two rendered images identical in practice: the same shapes at the same pixels."""
    pixels = lambda v: round(v * image_size)  # noqa: E731
    return tuple(sorted((s.kind, s.color, pixels(s.x), pixels(s.y), pixels(s.half)) for s in scene.shapes))


def _write_json(path: Path, data) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)


def generate_shapes_dataset(
    out_dir,
    *,
    num_train_images: int,
    num_test_images: int,
    image_size: int = 64,
    seed: int = 0,
    questions_per_image: int = 3,
    extra_types: tuple[str, ...] = (),
    train_weights: dict[str, float] | None = None,
    min_shapes: int = 1,
    max_shapes: int = 3,
    shape_scale: float = 1.0,
) -> dict:
    """Write images and LLaVA JSON under `out_dir`; `image` paths are relative to `out_dir`.

    Train images feed stage1.json (one caption each) and stage2.json (`questions_per_image` rows
    each, distinct question types). test.json asks the same kinds of questions about other images,
    drawn from an independent random stream and checked to differ from every training scene.
    stage2_multiturn.json and test_multiturn.json hold stage2.json's and test.json's questions again,
    one conversation per image (in the same order, so each question after the first is a follow-up),
    with a `question_type` list; stage3_questions.json a sixth of stage2.json's rows (`seed`'s shuffle).
    scenes.json keeps the scene of every image, for checking answers. `extra_types` adds question
    types of EXTRA_QUESTION_TYPES; `train_weights` replaces the training split's type weights.
    `min_shapes`, `max_shapes` and `shape_scale` set the scenes (`random_scene`); HARDER holds the
    harder variant's values (up to 6 smaller shapes, "find" questions), used by `visualrwkv ablate`.
    """
    unknown = sorted(set(extra_types) - set(EXTRA_QUESTION_TYPES))
    if unknown:
        raise ValueError(f"extra_types: {unknown} are not extra question types ({', '.join(EXTRA_QUESTION_TYPES)})")
    types = QUESTION_TYPES + tuple(extra_types)
    integer_args = (("num_train_images", num_train_images, 1), ("num_test_images", num_test_images, 0), ("seed", seed, 0))
    for name, value, low in integer_args:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise ValueError(f"image_size must be an integer in [32, 1024], got {image_size!r}")
    max_questions = len(types)
    if not isinstance(questions_per_image, int) or not 1 <= questions_per_image <= max_questions:
        raise ValueError(
            f"questions_per_image must be an integer in [1, {max_questions}], got {questions_per_image!r}"
        )

    check_scene_options(min_shapes, max_shapes, shape_scale)  # before anything is written
    # only what differs from the default scenes is passed on
    scene_args = {k: v for k, v in dict(min_shapes=min_shapes, max_shapes=max_shapes, shape_scale=shape_scale).items()
                  if v != {"min_shapes": 1, "max_shapes": 3, "shape_scale": 1.0}[k]}
    out = Path(out_dir)
    scenes: dict[str, dict] = {}
    stage1, stage2, test = [], [], []
    conversations = {"train": [], "test": []}
    train_signatures: set[tuple] = set()

    for split, count in (("train", num_train_images), ("test", num_test_images)):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        weights = (TRAIN_TYPE_WEIGHTS if train_weights is None else train_weights) if split == "train" else None
        balancer = QuestionBalancer(weights, types)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            scene = random_scene(rng, **scene_args)
            signature = _scene_signature(scene, image_size)
            while split == "test" and signature in train_signatures:
                scene = random_scene(rng, **scene_args)
                signature = _scene_signature(scene, image_size)
            if split == "train":
                train_signatures.add(signature)
            image = f"images/{split}/{index:06d}.png"
            render_scene(scene, image_size).save(out / image, compress_level=1)
            scenes[image] = scene.to_dict()
            base_id = f"shapes_{split}_{index:06d}"
            if split == "train":
                turns = _conversation(_pick(rng, CAPTION_REQUESTS), caption(scene))
                stage1.append({"id": base_id, "image": image, "conversations": turns})
            rows = stage2 if split == "train" else test
            questions = balancer.questions(scene, rng, questions_per_image)
            for q, qa in enumerate(questions):
                turns = _conversation(qa.question + ANSWER_SUFFIX, qa.answer)
                rows.append({"id": f"{base_id}_q{q}", "image": image, "question_type": qa.question_type,
                             "conversations": turns})
            turns = [turn for qa in questions for turn in _conversation(qa.question + ANSWER_SUFFIX, qa.answer)]
            for turn in turns[2::2]:  # the image belongs to the first question only
                turn["value"] = turn["value"].removeprefix("<image>\n")
            conversations[split].append({"id": base_id, "image": image,
                                         "question_type": [qa.question_type for qa in questions],
                                         "conversations": turns})

    names = ("stage1", "stage2", "stage2_multiturn", "stage3_questions", "test", "test_multiturn", "scenes")
    paths = {name: out / f"{name}.json" for name in names}
    _write_json(paths["stage1"], stage1)
    _write_json(paths["stage2"], stage2)
    replay = list(stage2)
    random.Random(seed).shuffle(replay)
    _write_json(paths["stage3_questions"], replay[:len(stage2) // 6])
    _write_json(paths["test"], test)
    _write_json(paths["stage2_multiturn"], conversations["train"])
    _write_json(paths["test_multiturn"], conversations["test"])
    _write_json(paths["scenes"], {"seed": seed, "image_size": image_size, "scenes": scenes})
    return {
        **{name: str(p) for name, p in paths.items()},
        "image_folder": str(out),
        "num_train_images": num_train_images,
        "num_test_images": num_test_images,
        "num_stage1": len(stage1),
        "num_stage2": len(stage2),
        "num_test": len(test),
        "num_test_conversations": len(conversations["test"]),
    }
