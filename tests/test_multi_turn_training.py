"""Conversations in training are rendered the way a live chat renders them (`multi_turn="chat"`, or
"image-every-turn" for a model that chats with the image laid out again in every question): for every
turn, the training tokens before the answer equal the engine's prompt for that turn, and the answer's
labels are the tokens the engine would then read back as the answer."""

from __future__ import annotations

import pytest
from PIL import Image

from visualrwkv.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
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


@pytest.mark.parametrize("rendering", ["chat", "image-every-turn"])
@pytest.mark.parametrize("position", ["middle", "first", "last"])
def test_every_turn_of_a_training_row_is_the_engines_prompt(image, position, rendering):
    tok = default_tokenizer()
    sample = tokenize_conversation(conversation(PAIRS), tok, position, num_images=1, multi_turn=rendering)
    ids, labels = sample.input_ids, sample.labels
    every_turn = rendering == "image-every-turn"
    for k, (question, answer) in enumerate(PAIRS):
        chat = build_chat_prompt(question, PAIRS[:k], image, tokenizer=tok, image_position=position,
                                 image_every_turn=every_turn)
        prompt = chat.ids
        assert ids[:len(prompt)] == prompt, f"turn {k + 1}: the training prefix is not the engine's prompt"
        assert chat.images == (image,) * (k + 1 if every_turn else 1)  # one per sentinel, in order
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
    for rendering in ("official", "chat", "image-every-turn"):
        assert LlavaDataset(data, multi_turn=rendering)[0]["input_ids"].numel() > 0
        assert TrainConfig(multi_turn=rendering).multi_turn == rendering
    with pytest.raises(ValueError, match="multi_turn must be one of"):
        LlavaDataset(data, multi_turn="live")
    with pytest.raises(ValueError, match=r"multi_turn must be one of \('official', 'chat', 'image-every-turn'\)"):
        TrainConfig(multi_turn="live")


def test_image_every_turn_sandwiches_each_later_question_around_the_image(image):
    """Each later question gets the image turn's tags and its own sandwich; a later turn that holds a
    tag keeps it as it is; with one question every rendering is the same."""
    from visualrwkv.prompts import render_text, render_conversation

    turns = render_conversation(conversation(PAIRS[:2]), "middle", multi_turn="image-every-turn")
    assert "".join(t.text for t in turns) == (
        "User: What color is the circle?\n<image>\nWhat color is the circle?" + SUFFIX + "\n\nAssistant: Red\n\n"
        "User: How many shapes are there?\n<image>\nHow many shapes are there?" + SUFFIX + "\n\nAssistant: 2\n\n")
    tagged = conversation(PAIRS[:2])
    tagged[2] = {"from": "human", "value": "Now this one: <image>"}
    text = "".join(t.text for t in render_conversation(tagged, "first", multi_turn="image-every-turn"))
    assert text.count("<image>") == 2 and "User: <image>\nNow this one:\n\n" in text
    one = conversation(PAIRS[:1])
    assert {"".join(t.text for t in render_conversation(one, "middle", multi_turn=m))
            for m in ("official", "chat", "image-every-turn")} == {render_text(one)}
    text_only = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                 {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Yes"}]
    assert render_conversation(text_only, multi_turn="image-every-turn") == render_conversation(text_only, multi_turn="chat")


def test_the_dataset_gives_one_image_per_sentinel_and_the_trainer_marks_the_model(tmp_path, image):
    import dataclasses
    import json

    from visualrwkv.model import VisualRWKVConfig
    from visualrwkv.train.config import TrainConfig
    from visualrwkv.train.trainer import build_model

    image.image.save(tmp_path / "a.png")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "r", "image": "a.png", "conversations": conversation(PAIRS[:3])}]))
    sample = LlavaDataset(data, multi_turn="image-every-turn")[0]
    assert int((sample["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == len(sample["images"]) == 3
    assert len(LlavaDataset(data, multi_turn="chat")[0]["images"]) == 1

    assert VisualRWKVConfig.from_dict({**_tiny_config(), "image_every_turn": True}).image_every_turn is True
    with pytest.raises(ValueError, match="image_every_turn must be true or false"):
        VisualRWKVConfig.from_dict({**_tiny_config(), "image_every_turn": "yes"})
    for rendering, marked in (("chat", False), ("image-every-turn", True)):
        model = build_model(TrainConfig(model=_tiny_config(), multi_turn=rendering), "cpu")
        assert model.config.image_every_turn is marked
        assert model.config.max_images == 1  # the same image again is not a second image
        assert dataclasses.replace(model.config).to_dict()["image_every_turn"] is marked


def _tiny_config() -> dict:
    return {"rwkv": {"n_embd": 64, "n_layer": 1, "vocab_size": 300, "head_size": 32},
            "vision": {"kind": "tiny", "tiny": {"image_size": 16, "patch_size": 8, "hidden_size": 32,
                                                  "num_layers": 1, "num_heads": 2}}}


def test_an_image_every_turn_model_chats_as_it_was_trained(tiny_vlm, image):
    """The engine gives such a model every later question with the image again, resumed from the state
    after the previous answer, and its answer equals greedy generation from the training rendering's prompt."""
    import dataclasses

    from visualrwkv.engine.engine import Engine
    from visualrwkv.engine.sampling import SamplingParams

    model = type(tiny_vlm)(dataclasses.replace(tiny_vlm.config, image_every_turn=True))
    model.load_state_dict(tiny_vlm.state_dict())
    model.eval()
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    with Engine(model) as engine:
        first = engine.generate(engine.build_prompt(PAIRS[0][0], image), greedy)
        history = [(PAIRS[0][0], first.text)]
        prompt = engine.build_prompt(PAIRS[1][0], image, history)
        assert prompt.ids.count(IMAGE_TOKEN_INDEX) == 2 and prompt.images == (image, image)
        result = engine.generate(prompt, greedy)
        got = result.token_ids
    assert first.text  # (the random model's greedy answer to this question is a few words)
    assert result.cached_tokens > 0  # the state after the first answer was stored, and resumed from
    tok = default_tokenizer()
    rows = conversation([(PAIRS[0][0], history[0][1]), (PAIRS[1][0], "")])
    want_ids = tokenize_conversation(rows[:-1] + [{"from": "gpt", "value": ""}], tok, "middle",
                                     num_images=1, multi_turn="image-every-turn").input_ids
    assert want_ids == prompt.ids
    want = model.generate_greedy(want_ids, [image.image, image.image], max_new_tokens=8)
    n = min(len(got), len(want))  # the engine also stops at "\n\n"
    assert n > 0 and got[:n] == want[:n]


def test_a_prompt_marked_as_repeating_its_images_must_repeat_them(image, tmp_path):
    from visualrwkv.engine.inputs import ChatPrompt

    other = ImageInput.from_bytes(_png((0, 0, 200)))
    assert ChatPrompt([IMAGE_TOKEN_INDEX] * 2, (image, image), [], 1).digests == [image.digest]
    assert ChatPrompt([IMAGE_TOKEN_INDEX] * 2, (image, image), []).digests == [image.digest] * 2
    with pytest.raises(ValueError, match="images are not their first 1 repeated"):
        ChatPrompt([IMAGE_TOKEN_INDEX] * 2, (image, other), [], 1)


def _png(color) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()
