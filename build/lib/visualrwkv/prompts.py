"""Conversation rendering, image position, per-turn tokenization and label masks (SPEC §7).

One prompt builder for training, evaluation, the demo and benchmarks: the inference prompt is the
training rendering of the same conversation with an empty gpt turn, so the two never drift apart.

Pipeline: conversations (LLaVA `[{"from": "human"|"gpt", "value": str}, ...]`)
  → `render_conversation` (normalise values, move `<image>` to `image_position`, add `User: `/`Assistant: `)
  → `tokenize_turns` (each turn encoded on its own; image turns split on `<image>` with the sentinel
    IMAGE_TOKEN_INDEX between the pieces) → `TokenizedSample(input_ids, labels, num_images)`.

Two prompt formats, chosen by the model's config (`VisualRWKVConfig.prompt_format`):
- "v6" (v6.0): the human turn holding `<image>` laid out by `image_position` (the sandwich by default),
  one image per conversation (SPEC §5.4 step 5; `check_image_count`);
- "v7" (v7.00, SPEC §7.4): images always start their human turn, one `<image>` line each
  (`<image>\\n<image>\\n{text}`), no image_position; the `<image>` count must equal the number of
  images, and a question without tags gets one per image (as the official evaluate.py does).
A human turn holding k `<image>` tags keeps k tags, in their original order, one per line at the image
position. Each human turn that holds tags is transformed on its own, as the official loop does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Mapping, Sequence

from visualrwkv.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from visualrwkv.rwkv.tokenizer import Tokenizer

ImagePosition = Literal["first", "last", "middle"]
IMAGE_POSITIONS: tuple[str, ...] = ("first", "last", "middle")
PROMPT_FORMATS: tuple[str, ...] = ("v6", "v7")
# How the sandwich's ALL_HUMAN (SPEC §7.3) treats a conversation of several questions: "official"
# lists every question in the image turn (the official training code); "chat" lists only the image
# turn's own, which is how a live chat renders each turn (engine/inputs.py: the first turn is fixed
# before the next question exists), so training in "chat" sees every answer in the context the
# engine gives it; "image-every-turn" lays the image turn's images out again in every later question,
# each sandwiched by its own question (a recurrent model then reads the image again knowing what is
# asked; a model trained so says it in VisualRWKVConfig.image_every_turn, and the engine renders its
# live chats the same way). One question: the three are the same.
MULTI_TURN_RENDERINGS: tuple[str, ...] = ("official", "chat", "image-every-turn")
ROLE_NAMES = {"human": "User", "gpt": "Assistant"}
# Removed from the image turn's copy inside ALL_HUMAN only (SPEC §7.3); the later copy keeps it.
SHORT_ANSWER_PHRASE = "Answer the question using a single word or phrase."
_BLANK_LINES = re.compile(r"\n(\s*\n)+")


class ConversationError(ValueError):
    """A conversation that cannot be rendered; the message names the turn and what is wrong."""


def check_prompt_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    return prompt_format


def layout_position(prompt_format: str, image_position: str) -> str:
    """Where images go: v6 follows `image_position`; v7 always puts them first (it has no image_position)."""
    return "first" if check_prompt_format(prompt_format) == "v7" else image_position


def check_image_count(n_images: int, max_images: int | None) -> None:
    """One clear line when a conversation holds more images than the model takes (None: no limit)."""
    if max_images is not None and n_images > max_images:
        takes = "one image" if max_images == 1 else f"at most {max_images} images"
        raise ConversationError(f"this model takes {takes} per conversation, got {n_images}")


@dataclass(frozen=True)
class TurnText:
    """One rendered turn: `speaker` is "human" or "gpt"; `text` is e.g. "User: hi\\n\\n" or "Assistant:"."""

    speaker: str
    text: str

    @property
    def role(self) -> str:
        return ROLE_NAMES[self.speaker]

    @property
    def pieces(self) -> list[str]:
        """The text around the `<image>` tags; the sentinel goes between consecutive pieces."""
        return self.text.split(DEFAULT_IMAGE_TOKEN)


@dataclass
class TokenizedSample:
    input_ids: list[int]  # text ids, with IMAGE_TOKEN_INDEX where an image is spliced
    labels: list[int]  # same length; IGNORE_INDEX where no loss is taken
    num_images: int  # number of IMAGE_TOKEN_INDEX sentinels in input_ids


def normalize_value(value: str) -> str:
    """strip(), then collapse blank and whitespace-only lines, so "\\n\\n" only ever ends a turn."""
    return _BLANK_LINES.sub("\n", value.strip())


def validate_conversations(conversations: Sequence[Mapping]) -> None:
    """Raise ConversationError unless every turn is {"from": "human"|"gpt", "value": str}."""
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise ConversationError(f"conversations must be a list of turns, got {type(conversations).__name__}")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise ConversationError(f"turn {i}: expected an object with 'from' and 'value', got {type(turn).__name__}")
        if "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {i}: missing {'from' if 'from' not in turn else 'value'!r}")
        if turn["from"] not in ROLE_NAMES:
            raise ConversationError(f"turn {i}: unknown role {turn['from']!r} (expected 'human' or 'gpt')")
        if not isinstance(turn["value"], str):
            raise ConversationError(f"turn {i}: 'value' must be a string, got {type(turn['value']).__name__}")
        if turn["from"] == "gpt" and DEFAULT_IMAGE_TOKEN in turn["value"]:
            raise ConversationError(f"turn {i}: {DEFAULT_IMAGE_TOKEN} in a gpt turn (images belong to human turns)")


def count_image_tags(conversations: Sequence[Mapping]) -> int:
    return sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in conversations)


def _all_human(conversations: Sequence[Mapping]) -> str:
    """ALL_HUMAN of the sandwich prompt (SPEC §7.3), matching the released checkpoints exactly:
    image turns are cleaned (tag and short-answer phrase removed, newlines collapsed); the other
    human turns are only stripped, so their suffixes and inner blank lines remain."""
    parts = []
    for turn in conversations:
        if turn["from"] != "human":
            continue
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            value = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            value = value.replace(SHORT_ANSWER_PHRASE, "").strip()
            parts.append(_BLANK_LINES.sub("\n", value))
        else:
            parts.append(value.strip())
    return "\n".join(parts)


def _place_images(value: str, image_position: str, all_human: str) -> str:
    tags = "\n".join([DEFAULT_IMAGE_TOKEN] * value.count(DEFAULT_IMAGE_TOKEN))
    text = normalize_value(value.replace(DEFAULT_IMAGE_TOKEN, ""))
    if image_position == "first":
        placed = f"{tags}\n{text}"
    elif image_position == "last":
        placed = f"{text}\n{tags}"
    else:
        placed = f"{all_human}\n{tags}\n{text}"
    # the composed value is stripped but not re-collapsed (official behaviour, see _all_human)
    return placed.strip()


def render_conversation(conversations: Sequence[Mapping], image_position: str = "middle",
                        prompt_format: str = "v6", multi_turn: str = "official") -> list[TurnText]:
    """Rendered turns, in order; concatenating their `text` gives the whole prompt. `multi_turn`: one
    of MULTI_TURN_RENDERINGS (what the sandwich lists in the image turn)."""
    image_position = layout_position(prompt_format, image_position)
    if image_position not in IMAGE_POSITIONS:
        raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {image_position!r}")
    if multi_turn not in MULTI_TURN_RENDERINGS:
        raise ValueError(f"multi_turn must be one of {MULTI_TURN_RENDERINGS}, got {multi_turn!r}")
    validate_conversations(conversations)
    every_turn = multi_turn == "image-every-turn"
    if every_turn:
        conversations = _tag_every_turn(conversations)
    all_human = ""
    if image_position == "middle":
        image_turns = [t for t in conversations if t["from"] == "human" and DEFAULT_IMAGE_TOKEN in t["value"]]
        all_human = _all_human(conversations if multi_turn == "official" else image_turns)
    turns = []
    for turn in conversations:
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            value = _place_images(value, image_position, _all_human([turn]) if every_turn else all_human)
        else:
            value = normalize_value(value)
        role = ROLE_NAMES[turn["from"]]
        # an empty turn is the inference slot: no space, no terminator, so the prompt ends "Assistant:"
        text = f"{role}: {value}\n\n" if value else f"{role}:"
        turns.append(TurnText(turn["from"], text))
    return turns


def _tag_every_turn(conversations: Sequence[Mapping]) -> list[Mapping]:
    """The turns with the first image turn's `<image>` tags added to every later human turn (a later
    turn that holds tags of its own keeps them)."""
    tags = next((t["value"].count(DEFAULT_IMAGE_TOKEN) for t in conversations
                 if t["from"] == "human" and DEFAULT_IMAGE_TOKEN in t["value"]), 0)
    out, seen = [], False
    for turn in conversations:
        if turn["from"] == "human" and tags:
            if seen and DEFAULT_IMAGE_TOKEN not in turn["value"]:
                turn = {**turn, "value": f"{DEFAULT_IMAGE_TOKEN}\n" * tags + turn["value"]}
            seen = seen or DEFAULT_IMAGE_TOKEN in turn["value"]
        out.append(turn)
    return out


def render_text(conversations: Sequence[Mapping], image_position: str = "middle", prompt_format: str = "v6") -> str:
    return "".join(t.text for t in render_conversation(conversations, image_position, prompt_format))


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer()


def _encode_turn(turn: TurnText, tokenizer) -> list[int]:
    ids: list[int] = []
    for k, piece in enumerate(turn.pieces):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(tokenizer.encode(piece))
    return ids


def tokenize_turns(turns: Sequence[TurnText], tokenizer) -> TokenizedSample:
    """Encode each turn separately (no token crosses a turn boundary) and build the labels:
    IGNORE for all human tokens (sentinels included) and the 3 "Assistant:" tokens of each gpt turn."""
    assistant_prefix = tokenizer.encode(ROLE_NAMES["gpt"] + ":")
    input_ids: list[int] = []
    labels: list[int] = []
    for i, turn in enumerate(turns):
        ids = _encode_turn(turn, tokenizer)
        if turn.speaker == "human":
            turn_labels = [IGNORE_INDEX] * len(ids)
        else:
            # the masked prefix length relies on "Assistant:" never merging with the answer's first token
            if ids[: len(assistant_prefix)] != assistant_prefix:
                raise ConversationError(f"turn {i}: gpt turn does not start with the 'Assistant:' tokens")
            turn_labels = [IGNORE_INDEX] * len(assistant_prefix) + ids[len(assistant_prefix) :]
        input_ids.extend(ids)
        labels.extend(turn_labels)
    num_images = sum(1 for t in input_ids if t == IMAGE_TOKEN_INDEX)
    return TokenizedSample(input_ids, labels, num_images)


def tokenize_conversation(
    conversations: Sequence[Mapping],
    tokenizer=None,
    image_position: str = "middle",
    num_images: int | None = None,
    prompt_format: str = "v6",
    multi_turn: str = "official",
) -> TokenizedSample:
    """Render and tokenize a training conversation. `num_images`, when given, must equal the number of
    `<image>` tags (each tag becomes one sentinel; the v7 format always checks it, counting no `image` as
    0); `tokenizer` defaults to the RWKV World tokenizer."""
    validate_conversations(conversations)
    if num_images is None and check_prompt_format(prompt_format) == "v7":
        num_images = 0
    if num_images is not None:
        tags = count_image_tags(conversations)
        if tags != num_images:
            raise ConversationError(f"{tags} {DEFAULT_IMAGE_TOKEN} tag(s) but {num_images} image(s)")
    turns = render_conversation(conversations, image_position, prompt_format, multi_turn)
    return tokenize_turns(turns, tokenizer or default_tokenizer())


def inference_conversation(question, has_image: bool = True, num_images: int | None = None) -> list[dict]:
    """LLaVA turns for a prompt: prior (question, answer) rounds, the new question, an empty gpt turn.

    `question` is a str, or a list of (question, answer) pairs followed by the new question (a str).
    With images and no `<image>` tag anywhere, one "<image>\\n" per image is put before the first
    question, as the official evaluation does; tags the caller placed are kept. `num_images` (when
    given, it overrides `has_image`): the tags, placed or added, must number exactly that many.
    """
    if num_images is not None:
        if type(num_images) is not int or num_images < 0:
            raise ValueError(f"num_images must be an integer >= 0, got {num_images!r}")
        has_image = num_images > 0
    if isinstance(question, str):
        history, new_question = [], question
    elif isinstance(question, Sequence) and question and isinstance(question[-1], str):
        history, new_question = list(question[:-1]), question[-1]
    else:
        raise ConversationError("question must be a str or a list of (question, answer) pairs ending with a str")
    turns: list[dict] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ConversationError(f"history item {i}: expected a (question, answer) pair of strings")
        if not pair[1].strip():
            raise ConversationError(f"history item {i}: empty answer")
        turns += [{"from": "human", "value": pair[0]}, {"from": "gpt", "value": pair[1]}]
    turns += [{"from": "human", "value": new_question}, {"from": "gpt", "value": ""}]
    tags = count_image_tags(turns)
    if has_image and tags == 0:
        added = (DEFAULT_IMAGE_TOKEN + "\n") * (num_images or 1)
        turns[0] = {"from": "human", "value": added + turns[0]["value"]}
    elif not has_image and tags:
        given = "has_image=False" if num_images is None else "no image was given"
        raise ConversationError(f"{given} but the prompt holds {tags} {DEFAULT_IMAGE_TOKEN} tag(s)")
    elif num_images is not None and tags and tags != num_images:
        raise ConversationError(f"the prompt holds {tags} {DEFAULT_IMAGE_TOKEN} tag(s) but {num_images} image(s) "
                                "were given")
    for i in range(0, len(turns), 2):
        # an empty human turn would render as "User:" with no terminator and run into the next turn
        if not turns[i]["value"].strip():
            raise ConversationError(f"question {i // 2} is empty")
    return turns


def build_inference_prompt(
    question,
    image_position: str = "middle",
    has_image: bool = True,
    *,
    tokenizer=None,
    num_images: int | None = None,
    prompt_format: str = "v6",
) -> list[int]:
    """Token ids of the generation prompt, ending with "\\n\\nAssistant:"; sentinels (IMAGE_TOKEN_INDEX)
    mark the images. See `inference_conversation` for the forms `question` may take."""
    turns = render_conversation(inference_conversation(question, has_image, num_images), image_position,
                                prompt_format)
    return tokenize_turns(turns, tokenizer or default_tokenizer()).input_ids
