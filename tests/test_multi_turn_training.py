"""Conversations in training are rendered the way a live chat renders them (`multi_turn="chat"`): for
every turn, the training tokens before the answer equal the engine's prompt for that turn, and the
answer's labels are the tokens the engine would then read back as the answer."""

from __future__ import annotations

import pytest
from PIL import Image

from visualrwkv.constants import IGNORE_INDEX
from visualrwkv.data.llava import LlavaDataset
from visualrwkv.engine.inputs import ImageInput, build_chat_prompt
from visualrwkv.prompts import default_tokenizer, normalize_value, tokenize_conversation

SUFFIX = "\nAnswer the question using a single word or phrase."
PAIRS = [("What color is the circle?" + SUFFIX, "Red"), ("How many shapes are there?" + SUFFIX, "2"),
         ("Is the red circle to the left or to the right of the blue square?" + SUFFIX, "Left"),
         ("Describe it.", "A red circle.\nAnd a blue square.")]


def conversation(pairs):
    turns = []
    for k, (q, a) in enumerate(pairs):
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
    return turns


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return ImageInput.from_path(path)


@pytest.mark.parametrize("position", ["middle", "first", "last"])
def test_every_turn_of_a_training_row_is_the_engines_prompt(image, position):
    tok = default_tokenizer()
    sample = tokenize_conversation(conversation(PAIRS), tok, position, num_images=1, multi_turn="chat")
    ids, labels = sample.input_ids, sample.labels
    for k, (question, answer) in enumerate(PAIRS):
        prompt = build_chat_prompt(question, PAIRS[:k], image, tokenizer=tok, image_position=position).ids
        assert ids[:len(prompt)] == prompt, f"turn {k + 1}: the training prefix is not the engine's prompt"
        # what follows is the answer as the engine reads it back (" answer\n\n"), all of it supervised
        reply = tok.encode(" " + normalize_value(answer) + "\n\n")
        assert ids[len(prompt):len(prompt) + len(reply)] == reply
        assert labels[len(prompt):len(prompt) + len(reply)] == reply
        assert labels[len(prompt) - 3:len(prompt)] == [IGNORE_INDEX] * 3  # "Assistant:" is not supervised
    assert len(ids) == len(prompt) + len(reply)


def test_the_official_rendering_lists_later_questions_in_the_first_turn(image):
    """Why "chat" exists: the official sandwich puts every question in the image turn, so from the second
    turn on its context is not the one a live chat gives; with one question the two renderings agree."""
    tok = default_tokenizer()
    official = tokenize_conversation(conversation(PAIRS[:2]), tok, "middle", num_images=1).input_ids
    chat = tokenize_conversation(conversation(PAIRS[:2]), tok, "middle", num_images=1, multi_turn="chat").input_ids
    assert official != chat
    # official: in ALL_HUMAN before the image and in its own turn; chat: in its own turn only
    assert tok.decode([t for t in official if t >= 0]).count("How many shapes") == 2
    assert tok.decode([t for t in chat if t >= 0]).count("How many shapes") == 1
    one = conversation(PAIRS[:1])
    assert tokenize_conversation(one, tok, "middle", num_images=1).input_ids == \
        tokenize_conversation(one, tok, "middle", num_images=1, multi_turn="chat").input_ids


def test_the_dataset_and_config_take_the_rendering_and_refuse_others(tmp_path):
    import json

    from visualrwkv.train.config import TrainConfig

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "r", "conversations": conversation(PAIRS[:2])[:]}]))
    # text-only rows: the tag removed
    rows = json.loads(data.read_text())
    rows[0]["conversations"][0]["value"] = rows[0]["conversations"][0]["value"].removeprefix("<image>\n")
    data.write_text(json.dumps(rows))
    for rendering in ("official", "chat"):
        assert LlavaDataset(data, multi_turn=rendering)[0]["input_ids"].numel() > 0
    with pytest.raises(ValueError, match="multi_turn must be one of"):
        LlavaDataset(data, multi_turn="live")
    with pytest.raises(ValueError, match="multi_turn must be 'official' or 'chat'"):
        TrainConfig(multi_turn="live")
