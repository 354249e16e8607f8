"""Prompt rendering, image position, per-turn tokenization and label masks (SPEC §7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from visualrwkv.prompts import (
    ConversationError,
    TurnText,
    build_inference_prompt,
    check_image_count,
    check_prompt_format,
    default_tokenizer,
    inference_conversation,
    layout_position,
    normalize_value,
    render_conversation,
    render_text,
    tokenize_conversation,
)
from visualrwkv.rwkv.tokenizer import Tokenizer

PHRASE = "Answer the question using a single word or phrase."
BUS = [
    {"from": "human", "value": f"<image>\nWhat is the color of the bus?\n{PHRASE}"},
    {"from": "gpt", "value": "Red"},
]
ASSISTANT = [5585, 41693, 59]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  hi  ", "hi"),
        ("a\n\nb", "a\nb"),
        ("a\n \t\n\n  \nb", "a\nb"),
        ("a\n  b", "a\n  b"),  # indentation of a non-blank line stays
        ("\n\n a \n\n", "a"),
    ],
)
def test_normalize_value_examples(raw, expected):
    assert normalize_value(raw) == expected


@given(st.text(alphabet=st.sampled_from("ab \t\n\r\u3000é"), max_size=40))
def test_normalize_value_invariants(raw):
    out = normalize_value(raw)
    assert out == out.strip()
    assert normalize_value(out) == out
    lines = out.split("\n")
    assert all(line.strip() for line in lines[1:-1]), "no blank or whitespace-only line survives"
    assert "\n\n" not in out


# ---------------------------------------------------------------- rendering (§7.3 examples)


def test_rendered_examples_exact():
    assert render_text(BUS, "first") == (
        f"User: <image>\nWhat is the color of the bus?\n{PHRASE}\n\nAssistant: Red\n\n"
    )
    assert render_text(BUS, "last") == f"User: What is the color of the bus?\n{PHRASE}\n<image>\n\nAssistant: Red\n\n"
    assert render_text(BUS, "middle") == (
        f"User: What is the color of the bus?\n<image>\nWhat is the color of the bus?\n{PHRASE}\n\nAssistant: Red\n\n"
    )


def test_sandwich_token_pieces(tok):
    turns = render_conversation(BUS, "middle")
    assert [t.speaker for t in turns] == ["human", "gpt"]
    assert turns[0].pieces == ["User: What is the color of the bus?\n", f"\nWhat is the color of the bus?\n{PHRASE}\n\n"]
    assert turns[1].pieces == ["Assistant: Red\n\n"]
    sample = tokenize_conversation(BUS, tok, "middle", num_images=1)
    expected = (
        tok.encode("User: What is the color of the bus?\n")
        + [IMAGE_TOKEN_INDEX]
        + tok.encode(f"\nWhat is the color of the bus?\n{PHRASE}\n\n")
        + tok.encode("Assistant: Red\n\n")
    )
    assert sample.input_ids == expected
    assert sample.num_images == 1


def test_roles_and_empty_turn():
    turns = render_conversation([{"from": "human", "value": " hi \n"}, {"from": "gpt", "value": "   "}])
    assert turns == [TurnText("human", "User: hi\n\n"), TurnText("gpt", "Assistant:")]
    assert turns[0].role == "User" and turns[1].role == "Assistant"


def test_unknown_role_is_named():
    with pytest.raises(ConversationError, match=r"turn 1: unknown role 'system'"):
        render_conversation([{"from": "human", "value": "a"}, {"from": "system", "value": "b"}])


@pytest.mark.parametrize(
    "conv, message",
    [
        ([{"from": "human"}], "turn 0: missing 'value'"),
        ([{"from": "human", "value": 3}], "turn 0: 'value' must be a string"),
        (["hello"], "turn 0: expected an object"),
        ([{"from": "gpt", "value": "<image> no"}], "turn 0: <image> in a gpt turn"),
        ("User: hi", "conversations must be a list"),
    ],
)
def test_malformed_conversations(conv, message):
    with pytest.raises(ConversationError, match=message):
        render_conversation(conv)


def test_bad_image_position():
    with pytest.raises(ValueError, match="image_position"):
        render_conversation(BUS, "centre")


def test_sandwich_all_human_multi_turn():
    conv = [
        {"from": "human", "value": f"What is it?\n<image>\n{PHRASE}"},
        {"from": "gpt", "value": "A bus"},
        {"from": "human", "value": f"  Which colour?\n\n{PHRASE}  "},
        {"from": "gpt", "value": "Red"},
    ]
    turns = render_conversation(conv, "middle")
    # phrase removed only from the image turn's copy; the other human turn is only stripped
    assert turns[0].text == (
        f"User: What is it?\nWhich colour?\n\n{PHRASE}\n<image>\nWhat is it?\n{PHRASE}\n\n"
    )
    assert turns[2].text == f"User: Which colour?\n{PHRASE}\n\n"


TWO_QUESTIONS = [
    {"from": "human", "value": f"<image>\nWhat is it?\n{PHRASE}"},
    {"from": "gpt", "value": "A bus"},
    {"from": "human", "value": f"Which colour?\n{PHRASE}"},
    {"from": "gpt", "value": "Red"},
]


def test_multi_turn_renderings_differ_only_in_what_the_image_turn_lists():
    """"official" lists every question in the image turn (the official training code); "chat" only the
    image turn's own, as a live chat renders the first turn before the next question exists."""
    official = render_conversation(TWO_QUESTIONS, "middle", multi_turn="official")
    chat = render_conversation(TWO_QUESTIONS, "middle", multi_turn="chat")
    assert official[0].text == f"User: What is it?\nWhich colour?\n{PHRASE}\n<image>\nWhat is it?\n{PHRASE}\n\n"
    assert chat[0].text == f"User: What is it?\n<image>\nWhat is it?\n{PHRASE}\n\n"
    assert [t.text for t in official[1:]] == [t.text for t in chat[1:]] == [
        "Assistant: A bus\n\n", f"User: Which colour?\n{PHRASE}\n\n", "Assistant: Red\n\n"]
    assert render_conversation(BUS, "middle", multi_turn="chat") == render_conversation(BUS, "middle")
    with pytest.raises(ValueError, match="multi_turn must be one of"):
        render_conversation(BUS, "middle", multi_turn="all")


def test_the_v7_format_puts_images_first_whatever_the_position():
    first = render_conversation(TWO_QUESTIONS, "first")
    assert first[0].text == f"User: <image>\nWhat is it?\n{PHRASE}\n\n"
    for position in ("first", "middle", "last"):
        assert render_conversation(TWO_QUESTIONS, position, prompt_format="v7") == first
    assert render_text(BUS, "middle", "v7") == f"User: <image>\nWhat is the color of the bus?\n{PHRASE}\n\nAssistant: Red\n\n"
    assert layout_position("v7", "last") == "first"
    assert [layout_position("v6", p) for p in ("first", "middle", "last")] == ["first", "middle", "last"]
    assert check_prompt_format("v6") == "v6" and check_prompt_format("v7") == "v7"
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        check_prompt_format("v8")
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        render_conversation(BUS, "middle", prompt_format="v0700")


def test_the_v7_format_always_counts_images(tok):
    """v7 data rows may hold several images or none; the tags must match them, no `image` meaning 0."""
    text_only = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello"}]
    assert tokenize_conversation(text_only, tok, prompt_format="v7").num_images == 0
    with pytest.raises(ConversationError, match="1 <image> tag\\(s\\) but 0 image\\(s\\)"):
        tokenize_conversation(BUS, tok, prompt_format="v7")
    assert tokenize_conversation(BUS, tok, prompt_format="v7", num_images=1).num_images == 1
    assert tokenize_conversation(BUS, tok).num_images == 1  # v6 without num_images: the tags are the count


@pytest.mark.parametrize("n, most, message", [
    (2, 1, "this model takes one image per conversation, got 2"),
    (4, 3, "this model takes at most 3 images per conversation, got 4"),
])
def test_too_many_images_is_one_line(n, most, message):
    with pytest.raises(ConversationError) as error:
        check_image_count(n, most)
    assert str(error.value) == message


@pytest.mark.parametrize("n, most", [(0, 1), (1, 1), (3, 3), (0, 0), (50, None)])
def test_as_many_images_as_the_model_takes_pass(n, most):
    assert check_image_count(n, most) is None


def test_rendered_turns_are_frozen():
    turn = render_conversation(BUS)[0]
    with pytest.raises(AttributeError):
        turn.text = "User: something else\n\n"


def test_several_images_kept_in_order_at_position(tok):
    conv = [{"from": "human", "value": "<image> compare <image>\nthese"}, {"from": "gpt", "value": "Same"}]
    assert render_conversation(conv, "first")[0].text == "User: <image>\n<image>\ncompare \nthese\n\n"
    assert render_conversation(conv, "last")[0].text == "User: compare \nthese\n<image>\n<image>\n\n"
    assert render_conversation(conv, "middle")[0].text == "User: compare \nthese\n<image>\n<image>\ncompare \nthese\n\n"
    sample = tokenize_conversation(conv, tok, "first", num_images=2)
    assert sample.num_images == 2
    first, second = [i for i, t in enumerate(sample.input_ids) if t == IMAGE_TOKEN_INDEX]
    assert sample.input_ids[first + 1 : second] == tok.encode("\n")


def test_more_tags_than_images_is_an_error(tok):
    conv = [{"from": "human", "value": "<image>\n<image>\nWhat?"}, {"from": "gpt", "value": "x"}]
    with pytest.raises(ConversationError, match=r"2 <image> tag\(s\) but 1 image\(s\)"):
        tokenize_conversation(conv, tok, num_images=1)


# ---------------------------------------------------------------- tokens and labels (§7.5, §7.6)


def test_spec_token_vectors(tok):
    assert tok.encode("User:") == [24281, 59]
    assert tok.encode("User: ") == [24281, 59, 33]
    assert tok.encode("Assistant:") == ASSISTANT
    assert tok.encode("Assistant: yes\n\n") == ASSISTANT + [22796, 261]
    assert tok.encode("\n\n") == [261] and tok.encode("\n") == [11]
    assert tok.encode("<image>") == [61, 34733, 63]
    assert tok.encode("Today is a beautiful day. 今天是美好的一天。") == [
        33520, 4600, 332, 59219, 21509, 47, 33, 10381, 11639, 13091, 15597, 11685, 14734, 10250, 11639, 10080,
    ]  # fmt: skip


def test_labels_of_the_bus_example(tok):
    for position in ("first", "last", "middle"):
        sample = tokenize_conversation(BUS, tok, position)
        assert len(sample.labels) == len(sample.input_ids)
        supervised = [label for label in sample.labels if label != IGNORE_INDEX]
        assert supervised == tok.encode(" Red\n\n") == [20733, 261]  # merged leading space, closing 261
        assert sample.labels[-2:] == [20733, 261]
        assert sample.labels[-5:-2] == [IGNORE_INDEX] * 3 and sample.input_ids[-5:-2] == ASSISTANT
        assert sample.labels[sample.input_ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX


def test_multi_turn_masks_are_aligned(tok):
    """The old v5.0 bug used cumulative turn lengths; every answer span must sit exactly on its turn."""
    conv = [
        {"from": "human", "value": "<image>\nFirst question?"},
        {"from": "gpt", "value": "First answer"},
        {"from": "human", "value": "Second, longer question about the picture?"},
        {"from": "gpt", "value": "Second"},
        {"from": "human", "value": "Third?"},
        {"from": "gpt", "value": "Third answer is long"},
    ]
    sample = tokenize_conversation(conv, tok, "middle", num_images=1)
    offset = 0
    for turn in render_conversation(conv, "middle"):
        n = sum(len(tok.encode(p)) for p in turn.pieces) + len(turn.pieces) - 1
        labels = sample.labels[offset : offset + n]
        ids = sample.input_ids[offset : offset + n]
        if turn.speaker == "human":
            assert labels == [IGNORE_INDEX] * n
        else:
            assert labels == [IGNORE_INDEX] * 3 + ids[3:]
            assert tok.decode(ids[3:]) == turn.text[len("Assistant:") :]
        offset += n
    assert offset == len(sample.input_ids)


def test_text_only_sample_is_plain_encode(tok):
    conv = [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "Hi"}]
    sample = tokenize_conversation(conv, tok, num_images=0)
    assert sample.input_ids == tok.encode("User: Hello there\n\n") + tok.encode("Assistant: Hi\n\n")
    assert sample.num_images == 0


_TEXT = st.text(alphabet=st.sampled_from("abcXYZ .?,\n\t é今"), max_size=25)


@st.composite
def conversations(draw):
    rounds = draw(st.integers(1, 4))
    image_round = draw(st.integers(0, rounds - 1))
    turns = []
    for r in range(rounds):
        question = draw(_TEXT)
        if r == image_round:
            k = draw(st.integers(0, 2))
            cut = draw(st.integers(0, len(question)))
            question = question[:cut] + "<image>" * k + question[cut:]
        if draw(st.booleans()):
            question += "\n" + PHRASE
        answer = draw(_TEXT.filter(lambda s: s.strip()))
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


@settings(max_examples=150, deadline=None)
@given(conv=conversations(), position=st.sampled_from(["first", "last", "middle"]))
def test_tokenization_invariants(tok, conv, position):
    sample = tokenize_conversation(conv, tok, position)
    text = render_text(conv, position)
    ids, labels = sample.input_ids, sample.labels
    assert len(ids) == len(labels)
    assert sample.num_images == text.count("<image>") == sum(t["value"].count("<image>") for t in conv)
    assert tok.decode([t for t in ids if t != IMAGE_TOKEN_INDEX]) == text.replace("<image>", "")
    assert all(label in (IGNORE_INDEX, t) for label, t in zip(labels, ids))
    assert all(label == IGNORE_INDEX for label, t in zip(labels, ids) if t == IMAGE_TOKEN_INDEX)
    supervised = tok.decode([label for label in labels if label != IGNORE_INDEX])
    assert supervised == "".join(f" {normalize_value(t['value'])}\n\n" for t in conv if t["from"] == "gpt")


@settings(max_examples=100, deadline=None)
@given(conv=conversations(), position=st.sampled_from(["first", "last", "middle"]))
def test_inference_prompt_is_training_prefix(tok, conv, position):
    """Prompt for the last question (history = earlier rounds) == training ids up to the last 'Assistant:'."""
    if not any("<image>" in t["value"] for t in conv):
        conv[0] = {"from": "human", "value": "<image>\n" + conv[0]["value"]}
    conv = [t if t["value"].strip() else {**t, "value": "?"} for t in conv]  # empty questions are refused
    pairs = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 2, 2)]
    prompt = build_inference_prompt([*pairs, conv[-2]["value"]], position, tokenizer=tok)
    train = tokenize_conversation(conv, tok, position).input_ids
    assert prompt[-4:] == [261] + ASSISTANT
    assert train[: len(prompt)] == prompt
    assert train[len(prompt) :] == tok.encode(f" {normalize_value(conv[-1]['value'])}\n\n")


def test_inference_prompt_bus_example(tok):
    prompt = build_inference_prompt(f"What is the color of the bus?\n{PHRASE}", "middle", tokenizer=tok)
    train = tokenize_conversation(BUS, tok, "middle").input_ids
    assert train == prompt + tok.encode(" Red\n\n")
    assert prompt.count(IMAGE_TOKEN_INDEX) == 1


def test_inference_prompt_text_only_and_errors(tok):
    prompt = build_inference_prompt("Hello", has_image=False, tokenizer=tok)
    assert prompt == tok.encode("User: Hello\n\n") + ASSISTANT
    with pytest.raises(ConversationError, match="has_image=False"):
        build_inference_prompt("<image>\nHello", has_image=False, tokenizer=tok)
    with pytest.raises(ConversationError, match="history item 0"):
        build_inference_prompt([("q", 3), "next"], tokenizer=tok)
    with pytest.raises(ConversationError, match="question 1 is empty"):
        build_inference_prompt([("q", "a"), " "], tokenizer=tok)
    with pytest.raises(ConversationError, match="list of"):
        build_inference_prompt([("q", "a")], tokenizer=tok)


def test_inference_prompt_puts_image_in_first_question(tok):
    prompt = build_inference_prompt([("What is it?", "A bus"), "Colour?"], "first", tokenizer=tok)
    assert tok.decode([t for t in prompt if t != IMAGE_TOKEN_INDEX]) == (
        "User: \nWhat is it?\n\nAssistant: A bus\n\nUser: Colour?\n\nAssistant:"
    )
    assert prompt.index(IMAGE_TOKEN_INDEX) == len(tok.encode("User: "))


# ---------------------------------------------------------------- which tokenizer


class CharTokenizer:
    """One id per character (its code point) and "Assistant:" as the 3 ids the labels expect."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_no_tokenizer_means_the_rwkv_world_tokenizer(tok):
    assert tokenize_conversation(BUS, image_position="first") == tokenize_conversation(BUS, tok, "first")
    assert build_inference_prompt("Colour?") == build_inference_prompt("Colour?", tokenizer=tok)
    assert build_inference_prompt("Colour?")[-3:] == ASSISTANT
    assert default_tokenizer() is default_tokenizer()  # built once
    assert default_tokenizer().encode("Assistant:") == ASSISTANT


def test_a_given_tokenizer_is_the_one_used():
    chars = CharTokenizer()
    prompt = build_inference_prompt("Hi", has_image=False, tokenizer=chars)
    assert prompt == [ord(c) for c in "User: Hi\n\nAssistant:"]
    sample = tokenize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], chars)
    assert sample.input_ids == [ord(c) for c in "User: Hi\n\nAssistant: Yo\n\n"]
    # with one id per character the masked "Assistant:" prefix is its 10 characters
    n_human = len("User: Hi\n\n")
    assert sample.labels == [IGNORE_INDEX] * (n_human + 10) + [ord(c) for c in " Yo\n\n"]
    assert sample.num_images == 0


def test_inference_turns_take_the_image_count():
    """One tag per image before the first question unless the caller placed them; `num_images` is
    checked as an integer >= 0 (a bool is not a count) and overrides `has_image`."""
    assert inference_conversation("Hi?") == [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": ""}]
    assert inference_conversation("Hi?", num_images=2)[0] == {"from": "human", "value": "<image>\n<image>\nHi?"}
    assert inference_conversation("Hi?", num_images=0)[0] == {"from": "human", "value": "Hi?"}
    assert inference_conversation("Hi?", has_image=True, num_images=0)[0] == {"from": "human", "value": "Hi?"}
    assert inference_conversation("Hi?", has_image=False, num_images=1)[0] == {"from": "human", "value": "<image>\nHi?"}
    for bad in (-1, True, 1.0, "1"):
        with pytest.raises(ValueError, match="num_images must be an integer >= 0"):
            inference_conversation("Hi?", num_images=bad)


def test_render_text_defaults_to_the_sandwich():
    assert render_text(BUS) == render_text(BUS, "middle") != render_text(BUS, "first")


def test_a_malformed_conversation_is_named_before_its_images_are_counted(tok):
    with pytest.raises(ConversationError, match="conversations must be a list of turns"):
        tokenize_conversation("What is it?", tok, num_images=1)
    with pytest.raises(ConversationError, match="turn 0: missing 'value'"):
        tokenize_conversation([{"from": "human"}], tok, prompt_format="v7")


class MergingTokenizer:
    """A tokenizer whose "Assistant:" merges with what follows, which the label mask cannot allow."""

    def encode(self, text: str) -> list[int]:
        return [7] if text.startswith("Assistant: ") else [ord(c) for c in text]


def test_a_tokenizer_that_merges_the_assistant_prefix_is_refused():
    with pytest.raises(ConversationError, match="turn 1: gpt turn does not start with the 'Assistant:' tokens"):
        tokenize_conversation(BUS, MergingTokenizer())


def test_blank_lines_inside_the_image_turn_collapse_in_the_sandwich_copy():
    conv = [{"from": "human", "value": f"<image>\nLine one\n\n\nLine two\n{PHRASE}"}, {"from": "gpt", "value": "Yes"}]
    assert render_conversation(conv, "middle")[0].text == (
        f"User: Line one\nLine two\n<image>\nLine one\nLine two\n{PHRASE}\n\n")


@pytest.mark.parametrize("question, kwargs, message", [
    ([("What is it?", "  "), "And now?"], {}, "history item 0: empty answer"),
    ("<image>\nHi?", {"has_image": False}, "has_image=False but the prompt holds 1 <image> tag(s)"),
    ("<image>\nHi?", {"num_images": 0}, "no image was given but the prompt holds 1 <image> tag(s)"),
    ("<image>\nHi?", {"num_images": 2}, "the prompt holds 1 <image> tag(s) but 2 image(s) were given"),
])
def test_inference_turns_name_what_is_wrong(question, kwargs, message):
    with pytest.raises(ConversationError) as error:
        inference_conversation(question, **kwargs)
    assert str(error.value) == message


def test_tags_the_caller_placed_are_kept_when_they_match_the_images():
    turns = inference_conversation("<image>\n<image>\nCompare them.", num_images=2)
    assert turns[0] == {"from": "human", "value": "<image>\n<image>\nCompare them."}
