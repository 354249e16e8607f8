"""score_predictions end to end on the fixtures: perfect answers score 100%, wrong ones 0, partial ones by hand."""

import json
from pathlib import Path

import pytest

from visualrwkv.eval.benchmarks import (
    ORACLE_PREDICTIONS,
    TASK_NAMES,
    build_fixture,
    get_task,
    read_items,
    score_items,
    score_predictions,
)
from visualrwkv.eval.items import EvalDataError
from visualrwkv.eval.predictions import prediction_record, read_predictions, write_predictions
from visualrwkv.eval.report import render_json, render_markdown
from visualrwkv.eval.tasks import textvqa, vqav2

N = 4
PERFECT = {"mme": 2000.0}  # MME reports the perception sum (10 subtasks x 200)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_scoring")
    for task in TASK_NAMES:
        build_fixture(task, root / task, n=N, seed=2)
    return root


def _write(path: Path, pairs) -> Path:
    write_predictions(path, pairs)
    return path


@pytest.mark.parametrize("task", TASK_NAMES)
def test_perfect_answers_score_full_marks(fixtures, task):
    spec = get_task(task)
    for variant in spec.variants:
        result = score_predictions(task, fixtures / task, fixtures / task / ORACLE_PREDICTIONS, variant=variant)
        assert result.score == pytest.approx(PERFECT.get(task, 100.0))
        assert (result.task, result.variant, result.n_missing, result.notes) == (task, variant, 0, ())
        assert result.scorer


@pytest.mark.parametrize("task", TASK_NAMES)
def test_wrong_answers_score_zero(fixtures, tmp_path, task):
    spec = get_task(task)
    items = read_items(task, fixtures / task)
    path = _write(tmp_path / "wrong.jsonl", [(i, spec.reference_answer(i, False)) for i in items])
    assert score_predictions(task, fixtures / task, path).score == 0.0


def test_mme_totals(fixtures):
    result = score_predictions("mme", fixtures / "mme", fixtures / "mme" / ORACLE_PREDICTIONS)
    assert result.extra == {"cognition": 800.0, "total": 2800.0}
    assert set(result.breakdown["perception"]) == {
        "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    }  # fmt: skip


def test_vqav2_single_dissenting_answer_scores_point_three(fixtures, tmp_path):
    # each fixture question has 9 copies of the answer (2 with a period) and 1 dissenting answer: 1 match = 0.3
    items = read_items("vqav2", fixtures / "vqav2")
    dissent = [next(a for a in i.meta["answers"] if a.rstrip(".") != i.meta["answer"]) for i in items]
    path = _write(tmp_path / "p.jsonl", zip(items, dissent))
    for variant in ("official", "evalai"):
        assert score_predictions("vqav2", fixtures / "vqav2", path, variant=variant).score == pytest.approx(30.0)


def test_missing_predictions_are_wrong_unless_only_answered(fixtures, tmp_path):
    items = read_items("vqav2", fixtures / "vqav2")
    path = _write(tmp_path / "p.jsonl", [(i, i.meta["answer"]) for i in items[1:]])
    result = score_predictions("vqav2", fixtures / "vqav2", path)
    assert result.score == pytest.approx(75.0) and result.n_missing == 1
    assert "1 of 4 prompts have no prediction" in result.notes[0]
    partial = score_predictions("vqav2", fixtures / "vqav2", path, only_answered=True)
    assert partial.score == 100.0 and partial.n_items == 3 and "only_answered" in partial.notes[0]


def test_scienceqa_unanswered_image_problem_leaves_the_llava_img_denominator(fixtures, tmp_path):
    items = read_items("scienceqa", fixtures / "scienceqa")
    spec = get_task("scienceqa")
    image_items = [i for i in items if "<image>" in i.text]
    keep = [i for i in items if i is not image_items[0]]
    path = _write(tmp_path / "p.jsonl", [(i, spec.reference_answer(i, True)) for i in keep])
    # LLaVA: the missing problem gets the prompt 'Unknown', so it is not multimodal: IMG = 3 of 3 answered
    llava = score_predictions("scienceqa", fixtures / "scienceqa", path)
    assert (llava.variant, llava.score, llava.n_questions) == ("llava", 100.0, N - 1)
    assert llava.extra["accuracy_all"] == pytest.approx(100.0 * (len(items) - 1) / len(items))
    assert llava.notes == (f"1 of {len(items)} prompts have no prediction; they are scored as wrong",)
    # strict: every image problem is in the denominator, the missing one wrong
    strict = score_predictions("scienceqa", fixtures / "scienceqa", path, variant="strict")
    assert (strict.score, strict.n_questions) == (pytest.approx(100.0 * (N - 1) / N), N)
    assert strict.extra["accuracy_all"] == llava.extra["accuracy_all"]


def test_scienceqa_llava_img_group_follows_the_answer_lines_prompt(fixtures, tmp_path):
    items = read_items("scienceqa", fixtures / "scienceqa")
    spec = get_task("scienceqa")
    image_item = next(i for i in items if "<image>" in i.text)
    text_item = next(i for i in items if "<image>" not in i.text)
    lines = []
    for item in items:
        record = prediction_record(item, spec.reference_answer(item, item is not text_item))
        record["prompt"] = item.text
        if item is image_item:
            record["prompt"] = "Question: ..."  # LLaVA reads no <image> here: not multimodal
        if item is text_item:
            record["prompt"] = "<image>\n" + item.text  # ... and here it does: its wrong answer joins IMG
        lines.append(json.dumps(record) + "\n")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(lines))
    result = score_predictions("scienceqa", fixtures / "scienceqa", path)
    assert (result.score, result.n_questions) == (pytest.approx(100.0 * (N - 1) / N), N)
    strict = score_predictions("scienceqa", fixtures / "scienceqa", path, variant="strict")
    assert (strict.score, strict.n_questions) == (100.0, N)


def test_pope_missing_prediction_counts_as_the_wrong_class(fixtures, tmp_path):
    items = read_items("pope", fixtures / "pope")
    spec = get_task("pope")
    # drop one "yes" question of the random split: a false negative there, others perfect
    dropped = next(i for i in items if i.meta["split"] == "random" and i.meta["label"] == "yes")
    path = _write(tmp_path / "p.jsonl", [(i, spec.reference_answer(i, True)) for i in items if i is not dropped])
    result = score_predictions("pope", fixtures / "pope", path)
    n_yes = sum(i.meta["split"] == "random" and i.meta["label"] == "yes" for i in items)
    recall = (n_yes - 1) / n_yes
    assert result.breakdown["random"]["f1"] == pytest.approx(100 * 2 * recall / (1 + recall))
    assert result.breakdown["popular"]["f1"] == 100.0
    # drop a "no" question instead: a false positive, so precision falls and recall stays 1
    dropped = next(i for i in items if i.meta["split"] == "popular" and i.meta["label"] == "no")
    path = _write(tmp_path / "q.jsonl", [(i, spec.reference_answer(i, True)) for i in items if i is not dropped])
    result = score_predictions("pope", fixtures / "pope", path)
    n_yes = sum(i.meta["split"] == "popular" and i.meta["label"] == "yes" for i in items)
    assert result.breakdown["popular"]["precision"] == pytest.approx(100 * n_yes / (n_yes + 1))
    assert result.breakdown["popular"]["recall"] == 100.0


def test_seed_variants_differ_on_decorated_letters(fixtures, tmp_path):
    items = read_items("seed", fixtures / "seed")
    path = _write(tmp_path / "p.jsonl", [(i, f"{i.meta['answer']}.") for i in items])
    assert score_predictions("seed", fixtures / "seed", path, variant="llava").score == 0.0  # exact match only
    assert score_predictions("seed", fixtures / "seed", path, variant="rule").score == 100.0


def test_seed_full_answer_file_with_video_answers_is_accepted(fixtures, tmp_path):
    items = read_items("seed", fixtures / "seed")
    path = _write(tmp_path / "p.jsonl", [(i, i.meta["answer"]) for i in items])
    with open(path, "a") as f:
        f.write(json.dumps({"question_id": 999, "text": "A"}) + "\n")  # the fixture's video question, int id
    result = score_predictions("seed", fixtures / "seed", path)
    assert (result.score, result.n_questions, result.extra) == (100.0, N, {"n_unscored": 1})
    assert result.notes == ("skipped 1 predictions for SEED-Bench video questions (not scored)",)
    with open(path, "a") as f:
        f.write(json.dumps({"question_id": "12345", "text": "A"}) + "\n")  # in neither part: still an error
    with pytest.raises(EvalDataError, match="question_id '12345' round 0 is not a seed image question"):
        score_predictions("seed", fixtures / "seed", path)


def test_mmbench_one_wrong_rotation_fails_the_question(fixtures, tmp_path):
    items = read_items("mmbench", fixtures / "mmbench")
    spec = get_task("mmbench")
    answers = [(i, spec.reference_answer(i, not (i.question_id == items[0].question_id and i.round_id == 1)))
               for i in items]  # fmt: skip
    result = score_predictions("mmbench", fixtures / "mmbench", _write(tmp_path / "p.jsonl", answers))
    assert result.score == pytest.approx(75.0)
    assert result.extra["single_pass_accuracy"] == 100.0
    assert result.n_questions == N and result.n_items == len(items)


def test_mmbench_unextractable_answer_is_wrong(fixtures, tmp_path):
    items = read_items("mmbench", fixtures / "mmbench")
    path = _write(tmp_path / "p.jsonl", [(i, "I cannot tell.") for i in items])
    assert score_predictions("mmbench", fixtures / "mmbench", path).score == 0.0


def test_textvqa_accepts_llava_answer_files_keyed_by_image(fixtures, tmp_path):
    items = read_items("textvqa", fixtures / "textvqa")
    rows = [
        {"question_id": i.meta["image_id"], "prompt": f"User: <image>\n{i.meta['question']}\n\nAssistant:",
         "text": i.meta["answer"]}
        for i in items
    ]  # fmt: skip
    path = tmp_path / "llava.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score_predictions("textvqa", fixtures / "textvqa", path).score == 100.0
    assert textvqa.TASK.resolver is not None


def test_unknown_and_repeated_question_ids(fixtures, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": 1000, "text": "yes"}\n{"question_id": 424242, "text": "no"}\n')
    with pytest.raises(EvalDataError, match=r"p\.jsonl:2: question_id 424242 round 0 is not a vqav2 val question"):
        score_predictions("vqav2", fixtures / "vqav2", path)
    path.write_text('{"question_id": 1000, "text": "yes"}\n{"question_id": "1000", "text": "no"}\n')
    with pytest.raises(EvalDataError, match=r"p\.jsonl:2: question_id '1000' round 0 repeats line 1"):
        score_predictions("vqav2", fixtures / "vqav2", path)


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"question_id": 1000, "text": "yes"', "invalid JSON"),
        ('{"question_id": 1000}', "missing field 'text'"),
        ('{"question_id": 1000, "text": 3}', "field 'text' must be str"),
        ('{"question_id": true, "text": "x"}', "field 'question_id' must be str or int"),
        ('{"question_id": 1000, "text": "x", "round_id": -1}', "round_id must be >= 0"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_malformed_prediction_lines(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": 1, "text": "ok"}\n\n' + line + "\n")
    with pytest.raises(EvalDataError, match=rf"p\.jsonl:3: .*{problem}"):
        read_predictions(path)


def test_bad_variant_and_task(fixtures):
    with pytest.raises(ValueError, match="unknown scorer variant 'mmf' for vqav2; choose one of official, evalai"):
        score_predictions("vqav2", fixtures / "vqav2", fixtures / "vqav2" / ORACLE_PREDICTIONS, variant="mmf")
    with pytest.raises(ValueError, match="unknown task 'vizwiz'"):
        get_task("vizwiz")


def test_vqav2_testdev_cannot_be_scored_locally(fixtures):
    items = read_items("vqav2", fixtures / "vqav2", split="testdev")
    with pytest.raises(EvalDataError, match="EvalAI"):
        score_items("vqav2", items, {i.key: "yes" for i in items}, split="testdev")


def test_vqav2_submission_file(fixtures, tmp_path):
    items = read_items("vqav2", fixtures / "vqav2", split="testdev")
    path = _write(tmp_path / "p.jsonl", [(items[0], "Two dogs!"), (items[1], "Yes.")])
    out = tmp_path / "sub" / "result.json"
    assert vqav2.write_submission(fixtures / "vqav2", path, out) == N
    rows = json.loads(out.read_text())
    assert rows[:3] == [
        {"question_id": items[0].question_id, "answer": "2 dogs"},  # EvalAI-processed, as LLaVA submits
        {"question_id": items[1].question_id, "answer": "yes"},
        {"question_id": items[2].question_id, "answer": ""},  # no prediction
    ]


def test_vqav2_submission_lists_the_full_test_set_when_present(fixtures, tmp_path):
    data = tmp_path / "vqav2"
    data.mkdir()
    for name in (vqav2.TESTDEV_QUESTIONS, vqav2.TEST_IMAGES):
        src = fixtures / "vqav2" / name
        (data / name).symlink_to(src, target_is_directory=src.is_dir())
    items = read_items("vqav2", data, split="testdev")
    full = [prediction_record(i, "") | {"image": "x.jpg"} for i in items] + [{"question_id": 9, "image": "y.jpg"}]
    (data / vqav2.TEST_QUESTIONS).write_text("".join(json.dumps(r) + "\n" for r in full))
    out = tmp_path / "result.json"
    assert vqav2.write_submission(data, _write(tmp_path / "p.jsonl", [(items[0], "no")]), out) == N + 1
    rows = json.loads(out.read_text())
    assert rows[0]["answer"] == "no" and rows[-1] == {"question_id": 9, "answer": ""}
    (data / vqav2.TEST_QUESTIONS).write_text("".join(json.dumps(r) + "\n" for r in full[1:]))
    with pytest.raises(EvalDataError, match=r"test2015\.jsonl: lacks 1 answered test-dev questions"):
        vqav2.write_submission(data, tmp_path / "p.jsonl", out)


def test_prediction_record_round_trip():
    from visualrwkv.eval.items import EvalItem

    item = EvalItem(5, "<image>\nq", None, round_id=2)
    assert prediction_record(item, "A", model="m") == {"question_id": 5, "text": "A", "round_id": 2, "model": "m"}
    assert prediction_record(EvalItem("x", "q", None), "B") == {"question_id": "x", "text": "B"}


def test_report_rendering(fixtures):
    results = [
        score_predictions(task, fixtures / task, fixtures / task / ORACLE_PREDICTIONS) for task in ("pope", "mme")
    ]
    md = render_markdown(results)
    assert "| pope | test | 100.00 | F1 (%) averaged over 3 split(s) | llava |" in md
    assert "| mme | test | 2000.00 |" in md
    assert "|  | adversarial | popular | random |" in md  # the split metrics share one table
    assert "|  | acc | acc_plus |" in md
    assert "### mme (test)" not in render_markdown(results, details=False)
    data = json.loads(render_json(results))
    assert data[0] == results[0].to_dict() and data[1]["extra"]["cognition"] == 800.0
