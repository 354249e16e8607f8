"""What a request asks about: validated images and the chat prompt built around them.

Multi-turn prompts (SPEC §9.2): the conversation is rendered the way it unfolded, so the state after
an answer can be resumed: the first turn is the usual inference prompt (with the sandwich layout it
lists only the first question), each answer is `" {answer}\\n\\n"` and each later question
`"User: {q}\\n\\nAssistant:"`. (`prompts.build_inference_prompt` with a history, the training
rendering, lists every question in the first turn instead, and so could never reuse a state.) A model
trained with the "image-every-turn" rendering (VisualRWKVConfig.image_every_turn) gets each later
question sandwiched around the images again, `"User: {q}\\n<image>\\n{q}\\n\\nAssistant:"`, as it was trained.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from visualrwkv.constants import IMAGE_TOKEN_INDEX, STOP_TOKEN_INDEX
from visualrwkv.prompts import build_inference_prompt, check_image_count, layout_position, normalize_value
from visualrwkv.vision.image import DEFAULT_MAX_PIXELS, ImageError, load_image


@dataclass(frozen=True)
class ImageInput:
    """A validated RGB image and the sha256 of its encoded bytes, which names it in the prefix cache."""

    image: Image.Image
    digest: bytes

    @classmethod
    def from_bytes(cls, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   name: str | None = None) -> "ImageInput":
        # load_image refuses bombs from the header and raises ImageError (a ValueError) on bad data
        return cls(load_image(bytes(data), max_pixels=max_pixels, name=name), hashlib.sha256(data).digest())

    @classmethod
    def from_path(cls, path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "ImageInput":
        path = os.fspath(path)
        if not os.path.isfile(path):
            load_image(path)  # raises the ImageError that says what is wrong with the path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"cannot read image {path!r}: {e}") from e
        return cls.from_bytes(data, max_pixels, name=repr(path))  # errors name the file, not "<N bytes>"


@dataclass
class ChatPrompt:
    ids: list[int]  # with one IMAGE_TOKEN_INDEX per image, where it goes
    images: tuple[ImageInput, ...]  # in the order of the sentinels (None or one ImageInput are taken too)
    checkpoints: list[int]  # prefix lengths whose states are looked up in / stored into the cache
    # > 0: `images` is its first `conversation_images` repeated, once per question (image_every_turn)
    conversation_images: int = 0

    def __post_init__(self):
        self.images = _image_tuple(self.images)
        n = self.conversation_images
        if n and (len(self.images) % n or self.images != self.images[:n] * (len(self.images) // n)):
            raise ValueError(f"images are not their first {n} repeated")

    @property
    def image(self) -> ImageInput | None:
        """The first image (None without one): the whole input of a one-image prompt."""
        return self.images[0] if self.images else None

    @property
    def digests(self) -> list[bytes]:
        """What names the prompt's images in the prefix cache: every image's digest, in order; the
        conversation's images once when they repeat in every question, so that a follow-up is named
        as the turns before it were and resumes from their state."""
        return [image.digest for image in self.images[:self.conversation_images or None]]


def _image_tuple(images) -> tuple[ImageInput, ...]:
    """None, one ImageInput or a sequence of them → a tuple (refusing anything else)."""
    if images is None:
        return ()
    if isinstance(images, ImageInput):
        return (images,)
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be ImageInput objects, got {type(images).__name__}")
    images = tuple(images)
    for i, image in enumerate(images):
        if not isinstance(image, ImageInput):
            raise TypeError(f"image {i} must be an ImageInput (ImageInput.from_path / from_bytes), "
                            f"got {type(image).__name__}")
    return images


def build_chat_prompt(question: str, history: Sequence[tuple[str, str]] = (),
                      image: ImageInput | Sequence[ImageInput] | None = None, *, tokenizer,
                      image_position: str = "middle", prompt_format: str = "v6",
                      max_images: int | None = None, image_every_turn: bool = False) -> ChatPrompt:
    """The prompt for `question` after the (question, answer) pairs of `history`, about `image` (one
    ImageInput, or several in order; all belong to the first question); see the module doc.
    `max_images`: more images than this are refused with one line (the model's limit).
    `image_every_turn` (VisualRWKVConfig.image_every_turn): every later question lays the images out
    again, as the first does (prompts "image-every-turn"); `images` then repeats them once per question."""
    images = _image_tuple(image)
    check_image_count(len(images), max_images)
    for i, pair in enumerate(history):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"history item {i}: expected a (question, answer) pair of strings")
        if not pair[1].strip():
            raise ValueError(f"history item {i}: the answer is empty")
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    turns = [q for q, _ in history] + [question]
    ids = build_inference_prompt(turns[0], image_position, tokenizer=tokenizer, num_images=len(images),
                                 prompt_format=prompt_format)
    checkpoints = []
    if images and layout_position(prompt_format, image_position) == "first" and IMAGE_TOKEN_INDEX in ids:
        # "User: <image>\n<image>": the state after the images is reusable for any question about them
        checkpoints.append(len(ids) - ids[::-1].index(IMAGE_TOKEN_INDEX))
    for (_, answer), next_question in zip(history, turns[1:]):
        checkpoints.append(len(ids))
        answer_ids = tokenizer.encode(" " + normalize_value(answer) + "\n\n")
        ids += answer_ids
        if answer_ids[-1] == STOP_TOKEN_INDEX:
            checkpoints.append(len(ids) - 1)  # where the engine stores the state after an answer
        again = len(images) if image_every_turn and images else None
        ids += build_inference_prompt(next_question, image_position, has_image=False, tokenizer=tokenizer,
                                      num_images=again, prompt_format=prompt_format)
    n_sentinels = ids.count(IMAGE_TOKEN_INDEX)
    per_turn = len(turns) if image_every_turn else 1
    if n_sentinels != len(images) * per_turn:
        raise ValueError(f"the prompt holds {n_sentinels} '<image>' tag(s) but {len(images)} image(s) "
                         "were given; the images belong to the first question")
    return ChatPrompt(ids, images * per_turn, sorted(set(checkpoints)), len(images) if image_every_turn else 0)
