"""The held-out evaluation (eval/heldout.py): single questions as before, conversations asked turn by
turn as a live chat asks them (the engine's rendering, the model's own earlier answers), per turn."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from visualrwkv.engine.engine import Engine, ImageInput
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.eval.heldout import evaluate_heldout

SUFFIX = "\nAnswer the question using a single word or phrase."
QUESTIONS = ["What color is it?" + SUFFIX, "How many shapes are there?" + SUFFIX, "Is it on the left?" + SUFFIX]


def greedy_chat(model, image_path, questions):
    """The answers a live chat gives: each question asked after the earlier (question, answer) pairs."""
    params = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=16)
    history, answers = [], []
    with Engine(model, cache_bytes=0) as engine:
        for q in questions:
            answer = engine.ask(q, ImageInput.from_path(image_path), history, params).result().text
            answers.append(answer)
            history.append((q, answer))
    return answers


@pytest.fixture(scope="module")
def files(tiny_vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "red.png")
    answers = greedy_chat(tiny_vlm, root / "red.png", QUESTIONS)
    assert len(set(answers)) > 1, "pick questions the random model answers differently"
    # expected answers: the chat's own for turns 1 and 3, a wrong one for turn 2
    expected = [answers[0], answers[1] + " not", answers[2]]
    turns = []
    for k, (q, a) in enumerate(zip(QUESTIONS, expected)):
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
    conversation = [{"id": "c0", "image": "red.png", "question_type": ["color", "count", "position"],
                     "conversations": turns}]
    singles = [{"id": f"s{k}", "image": "red.png", "question_type": "color",
                "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": answers[0]}]}
               for k, q in enumerate(QUESTIONS[:1] * 2)]
    (root / "conversation.json").write_text(json.dumps(conversation))
    (root / "single.json").write_text(json.dumps(singles))
    return root, answers


def test_a_conversation_is_asked_turn_by_turn_as_a_chat_asks_it(tiny_vlm, files):
    root, answers = files
    result = evaluate_heldout(tiny_vlm, root / "conversation.json")
    assert result.total == 3 and result.accuracy == pytest.approx(2 / 3)
    assert result.per_turn == {"1": {"accuracy": 1.0, "correct": 1, "total": 1},
                               "2": {"accuracy": 0.0, "correct": 0, "total": 1},
                               "3": {"accuracy": 1.0, "correct": 1, "total": 1}}
    assert result.per_type["count"]["correct"] == 0 and result.per_type["position"]["correct"] == 1
    assert result.examples == [{"id": "c0", "turn": 2, "question": QUESTIONS[1], "expected": answers[1] + " not",
                                "answer": answers[1]}]
    assert "| turn 2 | 0.0% | 0 / 1 |" in result.markdown()


def test_single_questions_keep_one_turn(tiny_vlm, files):
    root, _ = files
    result = evaluate_heldout(tiny_vlm, root / "single.json")
    assert (result.total, result.accuracy) == (2, 1.0)
    assert result.per_turn == {"1": {"accuracy": 1.0, "correct": 2, "total": 2}}
    assert "turn" not in result.markdown()


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "q"}]}, "in pairs, got 1 turn"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "turn 0 must be a human"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "question_type": ["a", "b"]},
     "question_type must be a string or a list of 1"),
    ({"image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
     "missing.png"),
])
def test_a_bad_row_is_named(tiny_vlm, tmp_path, row, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([dict(row, id="x7")]))
    with pytest.raises(ValueError, match=message) as info:
        evaluate_heldout(tiny_vlm, path)
    assert "bad.json[0] (id 'x7')" in str(info.value)
