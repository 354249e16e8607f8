"""The synthetic shapes dataset: answers checked against the scene by an independent oracle."""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visualrwkv.data import cli as data_cli
from visualrwkv.data.shapes import (
    ANSWER_SUFFIX,
    COLORS,
    QUESTION_TYPES,
    TRAIN_TYPE_WEIGHTS,
    QuestionBalancer,
    Scene,
    Shape,
    caption,
    generate_shapes_dataset,
    random_scene,
    render_scene,
)

# the oracle asks for at least this gap (fraction of the image side) before calling a relation clear
CLEAR_GAP = 0.05


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    result = generate_shapes_dataset(out, num_train_images=240, num_test_images=120, seed=5)
    load = lambda name: json.loads(Path(result[name]).read_text())  # noqa: E731
    return {"result": result, "out": out, "stage1": load("stage1"), "stage2": load("stage2"),
            "test": load("test"), "test_multiturn": load("test_multiturn"), "scenes": {k: Scene.from_dict(v) for k, v in load("scenes")["scenes"].items()}}


# ---------------------------------------------------------------- the oracle


def box(s: Shape):
    return s.x - s.half, s.y - s.half, s.x + s.half, s.y + s.half


def find(scene: Scene, color=None, kind=None) -> list[Shape]:
    return [s for s in scene.shapes if (color is None or s.color == color) and (kind is None or s.kind == kind)]


def the(scene: Scene, color=None, kind=None) -> Shape:
    matches = find(scene, color, kind)
    assert len(matches) == 1, f"ambiguous or missing referent {color} {kind}: {matches}"
    return matches[0]


def clearly_before(a: Shape, b: Shape, axis: int) -> bool:
    return box(a)[axis + 2] + CLEAR_GAP <= box(b)[axis]


def oracle(scene: Scene, question: str) -> tuple[str, str]:
    """(question type, answer) recomputed from the scene; fails on an ambiguous question."""
    q = question
    if m := re.fullmatch(r"(?:What color is|What is the color of|Which color is) the (\w+)\?", q):
        return "color", the(scene, kind=m[1]).color.capitalize()
    if m := re.fullmatch(r"(?:What shape is the|What is the shape of the) (\w+) object\?|Which shape is (\w+)\?", q):
        return "shape", the(scene, color=m[1] or m[2]).kind.capitalize()
    if re.fullmatch(r"How many (?:shapes are there|shapes are in the image|objects are there)\?", q):
        return "count", str(len(scene.shapes))
    if m := re.fullmatch(r"How many (circle|square|triangle)s are there\?", q):
        return "count", str(len(find(scene, kind=m[1])))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", q):
        assert m[1] in COLORS
        return "count", str(len(find(scene, color=m[1])))
    if m := re.fullmatch(r"(?:Is there|Does the image contain) an? (\w+) (\w+)(?: in the image)?\?", q):
        return "existence", "Yes" if find(scene, m[1], m[2]) else "No"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:to the left or to the right of|left or right of|(above or below)) the (\w+) (\w+)\?", q):
        a, b = the(scene, m[1], m[2]), the(scene, m[4], m[5])
        axis = 1 if m[3] else 0
        before, after = clearly_before(a, b, axis), clearly_before(b, a, axis)
        assert before or after, f"the relation is not clear-cut: {a} vs {b}"
        return "position", ("Above" if before else "Below") if axis else ("Left" if before else "Right")
    if m := re.fullmatch(r"(?:Which side of the image is the (\w+) (\w+) on, left or right|Is the (\w+) (\w+) on the left or right side of the image)\?", q):
        s = the(scene, m[1] or m[3], m[2] or m[4])
        left, _, right, _ = box(s)
        assert right < 0.5 or left > 0.5, f"{s} straddles the vertical middle"
        return "position", "Left" if right < 0.5 else "Right"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:in the top or bottom half|near the top or the bottom) of the image\?", q):
        s = the(scene, m[1], m[2])
        _, top, _, bottom = box(s)
        assert bottom < 0.5 or top > 0.5, f"{s} straddles the horizontal middle"
        return "position", "Top" if bottom < 0.5 else "Bottom"
    raise AssertionError(f"the oracle does not know this question: {q!r}")


def assert_scene_valid(scene: Scene) -> None:
    assert 1 <= len(scene.shapes) <= 3
    assert len({(s.color, s.kind) for s in scene.shapes}) == len(scene.shapes)
    for s in scene.shapes:
        left, top, right, bottom = box(s)
        assert 0 < left and right < 1 and 0 < top and bottom < 1
        assert s.half * 64 >= 7, "too small to recognise at 64 px"
    for i, a in enumerate(scene.shapes):
        for b in scene.shapes[i + 1 :]:
            assert any(clearly_before(p, r, axis) for p, r in ((a, b), (b, a)) for axis in (0, 1)), (a, b)


# ---------------------------------------------------------------- scenes and pixels


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_scenes_and_their_questions_are_correct(seed):
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    assert_scene_valid(scene)
    for qa in QuestionBalancer().questions(scene, rng, len(QUESTION_TYPES)):
        assert oracle(scene, qa.question) == (qa.question_type, qa.answer)


def test_rendered_shapes_sit_where_the_scene_says_and_do_not_touch():
    rng = np.random.default_rng(1)
    for _ in range(30):
        scene = random_scene(rng)
        img = np.asarray(render_scene(scene, 64)).astype(int)
        assert img.shape == (64, 64, 3)
        masks = []
        for s in scene.shapes:
            alone = np.asarray(render_scene(Scene((s,), scene.background), 64)).astype(int)
            masks.append(np.abs(alone - np.array(scene.background)).sum(-1) > 0)
            # a point well inside the shape has its color (the triangle's inside is below its centre)
            cx, cy = int(s.x * 64), int((s.y + (s.half / 3 if s.kind == "triangle" else 0)) * 64)
            assert np.abs(img[cy, cx] - np.array(COLORS[s.color])).max() <= 2, (s, img[cy, cx])
            # the top-left corner of the bounding box is filled only for a square
            corner = alone[int((s.y - s.half) * 64) + 1, int((s.x - s.half) * 64) + 1]
            assert (np.abs(corner - np.array(COLORS[s.color])).max() <= 40) == (s.kind == "square"), s
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not (masks[i] & masks[j]).any(), "shapes overlap in pixels"


def test_caption_lists_shapes_left_to_right_with_articles_and_where_they_are():
    bg = (240, 240, 240)
    scene = Scene((Shape("square", "blue", 0.7, 0.6, 0.12), Shape("circle", "orange", 0.2, 0.3, 0.12),
                   Shape("triangle", "green", 0.45, 0.8, 0.12)), bg)
    assert caption(scene) == ("An orange circle at the top left, a green triangle at the bottom left"
                              " and a blue square at the bottom right.")
    assert caption(Scene(scene.shapes[:1], bg)) == "A blue square at the bottom right."
    assert caption(Scene(scene.shapes[:2], bg)) == "An orange circle at the top left and a blue square at the bottom right."


# ---------------------------------------------------------------- files


def test_llava_format(dataset):
    for name in ("stage1", "stage2", "test"):
        for row in dataset[name]:
            assert isinstance(row["id"], str) and isinstance(row["image"], str)
            assert (dataset["out"] / row["image"]).is_file()
            turns = row["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
            assert turns[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in turns) == 1
            if name != "stage1":
                assert turns[0]["value"].endswith(ANSWER_SUFFIX)
                assert row["question_type"] in QUESTION_TYPES
                assert re.fullmatch(r"[A-Z][a-z]*|\d", turns[1]["value"]), turns[1]["value"]
        ids = [row["id"] for row in dataset[name]]
        assert len(ids) == len(set(ids))


def test_every_answer_matches_the_scene(dataset):
    scenes = dataset["scenes"]
    for name in ("stage2", "test"):
        for row in dataset[name]:
            scene = scenes[row["image"]]
            question = row["conversations"][0]["value"].removeprefix("<image>\n").removesuffix(ANSWER_SUFFIX)
            assert oracle(scene, question) == (row["question_type"], row["conversations"][1]["value"])
    for row in dataset["stage1"]:
        assert row["conversations"][1]["value"] == caption(scenes[row["image"]])


def test_scenes_are_valid(dataset):
    for scene in dataset["scenes"].values():
        assert_scene_valid(scene)


def test_counts_and_paths_reported(dataset):
    r = dataset["result"]
    assert (r["num_stage1"], r["num_stage2"], r["num_test"]) == (240, 720, 360)
    assert len(dataset["stage1"]) == 240 and len(dataset["test"]) == 360
    assert len(dataset["scenes"]) == 360 and Path(r["image_folder"]) == dataset["out"]


def test_multiturn_split_asks_each_images_questions_as_one_conversation(dataset):
    """test_multiturn.json: test.json's rows again, grouped by image in the same order; the image tag
    only in the first question, each later question a plain follow-up; one question type per question."""
    rows = dataset["test_multiturn"]
    assert dataset["result"]["num_test_conversations"] == len(rows) == 120
    flat = []
    for row in rows:
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) == 6
        assert turns[0]["value"].startswith("<image>\n")
        assert not any("<image>" in t["value"] for t in turns[1:])
        assert len(row["question_type"]) == 3
        for k, kind in enumerate(row["question_type"]):
            flat.append((row["image"], kind, turns[2 * k]["value"].removeprefix("<image>\n"), turns[2 * k + 1]["value"]))
    single = [(r["image"], r["question_type"], r["conversations"][0]["value"].removeprefix("<image>\n"),
               r["conversations"][1]["value"]) for r in dataset["test"]]
    assert flat == single


def test_splits_are_disjoint(dataset):
    train_images = {row["image"] for row in dataset["stage1"]} | {row["image"] for row in dataset["stage2"]}
    test_images = {row["image"] for row in dataset["test"]}
    assert train_images.isdisjoint(test_images)

    def digest(path):
        return hashlib.sha256((dataset["out"] / path).read_bytes()).hexdigest()

    assert {digest(p) for p in train_images}.isdisjoint({digest(p) for p in test_images})
    def pixels(path):  # the same shapes at the same pixel positions and sizes
        return tuple(sorted((s.kind, s.color, *(round(v * 64) for v in (s.x, s.y, s.half)))
                            for s in dataset["scenes"][path].shapes))

    assert {pixels(p) for p in train_images}.isdisjoint({pixels(p) for p in test_images})


@pytest.mark.parametrize("split", ["stage2", "test"])
def test_question_types_and_yes_no_are_balanced(dataset, split):
    rows = dataset[split]
    types = collections.Counter(row["question_type"] for row in rows)
    assert set(types) == set(QUESTION_TYPES)
    # training asks position questions twice as often (TRAIN_TYPE_WEIGHTS); the held-out split is balanced
    weights = {t: TRAIN_TYPE_WEIGHTS.get(t, 1.0) if split == "stage2" else 1.0 for t in QUESTION_TYPES}
    shares = [types[t] / weights[t] for t in QUESTION_TYPES]
    assert max(shares) - min(shares) <= 0.05 * len(rows), types
    answers = collections.Counter((row["question_type"], row["conversations"][1]["value"]) for row in rows)
    assert abs(answers[("existence", "Yes")] - answers[("existence", "No")]) <= 1
    assert answers[("existence", "Yes")] > 0
    # relations are asked about both orders of a pair, so each direction is the answer about as often
    for first, second in (("Left", "Right"), ("Above", "Below"), ("Top", "Bottom")):
        a, b = answers[("position", first)], answers[("position", second)]
        assert a > 0 and b > 0 and abs(a - b) <= 3 * (a + b) ** 0.5, (first, a, second, b)  # 3 sigma of a fair coin
    # each image asks distinct question types
    per_image = collections.defaultdict(list)
    for row in rows:
        per_image[row["image"]].append(row["question_type"])
    assert all(len(t) == len(set(t)) == 3 for t in per_image.values())


def test_deterministic_in_the_seed(tmp_path):
    def snapshot(out, seed):
        generate_shapes_dataset(out, num_train_images=12, num_test_images=6, seed=seed)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a = snapshot(tmp_path / "a", 3)
    assert a == snapshot(tmp_path / "b", 3)
    c = snapshot(tmp_path / "c", 4)
    assert a.keys() == c.keys() and a["stage2.json"] != c["stage2.json"]
    assert Image.open(tmp_path / "a" / "images/train/000000.png").size == (64, 64)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_train_images": 0}, "num_train_images"),
        ({"num_test_images": -1}, "num_test_images"),
        ({"image_size": 16}, "image_size"),
        ({"questions_per_image": 6}, "questions_per_image"),
        ({"seed": -2}, "seed"),
    ],
)
def test_arguments_are_validated(tmp_path, kwargs, field):
    args = {"num_train_images": 2, "num_test_images": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        generate_shapes_dataset(tmp_path, **args)


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="visualrwkv")
    data_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "shapes", "--out", str(tmp_path), "--train", "4", "--test", "2",
                              "--seed", "9", "--image-size", "48"])
    assert args.func(args) == 0
    assert "stage2" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "stage1.json").read_text())) == 4
    assert Image.open(tmp_path / "images/test/000001.png").size == (48, 48)


def test_a_test_scene_equal_to_a_training_scene_is_redrawn(tmp_path, monkeypatch):
    from visualrwkv.data import shapes

    real = shapes.random_scene
    calls = []

    def first_test_scene_repeats_training(rng, num_shapes=None):
        scene = real(rng, num_shapes)
        calls.append(scene)
        return calls[0] if len(calls) == 4 else scene  # call 4 = the first test image

    monkeypatch.setattr(shapes, "random_scene", first_test_scene_repeats_training)
    generate_shapes_dataset(tmp_path, num_train_images=3, num_test_images=2, seed=0)
    scenes = json.loads((tmp_path / "scenes.json").read_text())["scenes"]
    assert len(calls) == 6
    assert scenes["images/test/000000.png"] == calls[4].to_dict() != scenes["images/train/000000.png"]
