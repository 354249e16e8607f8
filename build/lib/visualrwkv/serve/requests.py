"""Validation of an OpenAI `POST /v1/chat/completions` body into what the engine needs.

Accepted: `messages` alternating user / assistant turns and ending with a user turn; user content is
a string or a list of `{"type": "text"}` and `{"type": "image_url"}` parts, with images as base64
`data:` URIs (the server never fetches URLs). Images go in the first user message, in the order of
their parts (the model places them in the first turn): as many as the model takes (one for a v6
model, SPEC §5.4) and at most `Limits.max_images` per request (`serve --max-images`); more is a 400
that names the limit, counted before any image is decoded. System and developer messages with text are
refused (400), never silently dropped: VisualRWKV was trained without a system prompt (SPEC §7.1) and
renders none, so an instruction there would not reach the model; put it in the user message. Fields
the server cannot honour (response_format other than text, tool_choice, logit_bias, audio, ...)
are refused the same way, as tools are.

Sampling fields: temperature, top_p, max_tokens (or max_completion_tokens), seed, stop,
presence_penalty, frequency_penalty, plus the RWKV extensions top_k and penalty_decay. Fields the
client omits take the RWKV defaults of `SamplingParams` (e.g. top_p 0.85, penalties 0.2).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from visualrwkv.engine.engine import ImageInput
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.prompts import check_image_count
from visualrwkv.serve.errors import APIError

MAX_STOP_STRINGS = 4  # the OpenAI limit
INSTRUCTION_ROLES = ("system", "developer")
# OpenAI fields this server cannot honour: refused with a 400 naming them, rather than ignored.
# value → None: refused whenever present and not "empty"; a set: the values that are accepted
UNSUPPORTED_FIELDS = {
    "response_format": {"text"},  # by its "type"
    "tool_choice": {"none"},
    "parallel_tool_calls": None,
    "function_call": {"none"},
    "logit_bias": None,
    "audio": None,
    "modalities": {"text"},
    "prediction": None,
    "web_search_options": None,
}
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)


DEFAULT_MAX_IMAGES = 8


@dataclass
class Limits:
    max_image_bytes: int = 10 * 1024 * 1024  # each image
    max_image_pixels: int = 4096 * 4096  # each image
    max_images: int = DEFAULT_MAX_IMAGES  # per request (the model may take fewer)


@dataclass
class ChatRequest:
    model: str
    question: str
    history: list[tuple[str, str]]
    images: list[ImageInput]  # in order
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    ignored: list[str] = field(default_factory=list)


def parse_chat_request(body, served_model: str, limits: Limits, model_max_images: int | None = None) -> ChatRequest:
    """Raise APIError (4xx) naming the field and what is wrong; decode and check the images.
    `model_max_images`: the images per conversation the served model takes (None: any number)."""
    model, stream, include_usage = _parse_common(body, served_model)
    question, history, images = _parse_messages(body.get("messages"), limits, model_max_images)
    return ChatRequest(model, question, history, images, _sampling(body), stream, include_usage)


@dataclass
class CompletionRequest:
    """`POST /v1/completions`: plain text the model continues (no chat template, no image)."""

    model: str
    prompt: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False


def parse_completion_request(body, served_model: str) -> CompletionRequest:
    model, stream, include_usage = _parse_common(body, served_model)
    for name in ("echo", "suffix"):
        if body.get(name):
            raise APIError(400, f"'{name}' is not supported", name)
    if body.get("best_of", 1) != 1:
        raise APIError(400, f"'best_of' must be 1, got {body.get('best_of')!r}", "best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return CompletionRequest(model, prompt, _sampling(body), stream, include_usage)


def _parse_common(body, served_model: str) -> tuple[str, bool, bool]:
    """The checks every generation request shares: → (model, stream, include_usage)."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required: a model name string (see GET /v1/models)", "model")
    if model != served_model:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {served_model!r}", "model",
                       "model_not_found")
    if body.get("n", 1) != 1:
        raise APIError(400, f"'n' must be 1 (one answer per request), got {body.get('n')!r}", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise APIError(400, "logprobs are not supported", "logprobs")
    if body.get("tools") or body.get("functions"):
        raise APIError(400, "tools and function calling are not supported", "tools")
    for name, accepted in UNSUPPORTED_FIELDS.items():
        value = body.get(name)
        if value in (None, {}, [], False):
            continue
        shown = value.get("type") if isinstance(value, dict) else value
        shown = shown[0] if isinstance(shown, list) and len(shown) == 1 else shown
        if accepted is None or not isinstance(shown, str) or shown not in accepted:
            allowed = f" (only {', '.join(map(repr, sorted(accepted)))})" if accepted else ""
            raise APIError(400, f"'{name}' is not supported{allowed}, got {value!r}", name)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    return model, stream, bool(options.get("include_usage", False))


def _parse_messages(messages, limits: Limits, model_max_images: int | None = None):
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of messages", "messages")
    turns: list[tuple[str, str]] = []  # (role, text)
    urls: list[tuple[str, str]] = []  # (where, data URI) of every image, in order
    later: str | None = None  # the first message after the first one that holds an image
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", "messages")
        role = message.get("role")
        if role in INSTRUCTION_ROLES:
            text, images = _parse_content(message.get("content"), where, allow_images=False)
            if text.strip():
                raise APIError(400, f"{where}: {role} messages are not supported: this model was trained without "
                                    "a system prompt, so the instruction would not reach it; put it in the user "
                                    "message", "messages")
            continue  # an empty one says nothing
        if role not in ("user", "assistant"):
            raise APIError(400, f"{where}.role must be 'user' or 'assistant', got {role!r}", "messages")
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise APIError(400, f"{where}: expected a {expected} message (user and assistant messages must "
                                "alternate, starting with user)", "messages")
        text, images = _parse_content(message.get("content"), where, allow_images=role == "user")
        if images and turns and later is None:
            later = where
        urls += [(f"{where} image {k + 1}" if len(images) > 1 else f"{where} image", url)
                 for k, url in enumerate(images)]
        if not text.strip():
            raise APIError(400, f"{where}: the {role} message has no text", "messages")
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must be a user message (the question to answer)", "messages")
    # counted before anything is decoded: the model's limit, then this server's
    try:
        check_image_count(len(urls), model_max_images)
    except ValueError as e:
        raise APIError(400, str(e), "messages", "too_many_images") from None
    if len(urls) > limits.max_images:
        raise APIError(400, f"{len(urls)} images in the request, above this server's limit of {limits.max_images} "
                            "per request", "messages", "too_many_images")
    if later is not None:
        raise APIError(400, f"{later}: images go in the first user message (the images of a conversation "
                            "belong to its first question)", "messages")
    images = [_decode_image(url, where, limits) for where, url in urls]
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return turns[-1][1], history, images


def _parse_content(content, where: str, allow_images: bool) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of content parts", "messages")
    texts, images = [], []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and allow_images:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise APIError(400, f"{part_where}.image_url.url must be a string", "messages")
            images.append(url)
        elif kind == "image_url":
            raise APIError(400, f"{part_where}: images are only accepted in user messages", "messages")
        else:
            raise APIError(400, f"{part_where} must be {{'type': 'text', 'text': str}} or "
                                f"{{'type': 'image_url', 'image_url': {{'url': 'data:...'}}}}", "messages")
    return "\n".join(texts), images


def _decode_image(url: str, where: str, limits: Limits) -> ImageInput:
    match = _DATA_URI.match(url)
    if not match:
        shown = url[:40] + ("…" if len(url) > 40 else "")
        raise APIError(400, f"{where}: expected a base64 data URI ('data:image/png;base64,...'), got {shown!r}; "
                            "the server does not fetch URLs", "messages")
    payload = url[match.end():]
    # checked before decoding: base64 is 4 characters per 3 bytes
    if len(payload) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        raise APIError(400, f"{where}: the image is larger than the limit of {limits.max_image_bytes} bytes",
                       "messages", "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{where}: invalid base64 in the data URI ({e})", "messages", "invalid_image") from None
    if len(data) > limits.max_image_bytes:
        raise APIError(400, f"{where}: the image is {len(data)} bytes, above the limit of {limits.max_image_bytes}",
                       "messages", "image_too_large")
    try:
        return ImageInput.from_bytes(data, max_pixels=limits.max_image_pixels)
    except ValueError as e:  # ImageError: not an image, truncated, too many pixels
        raise APIError(400, f"{where}: {e}", "messages", "invalid_image") from None


def _sampling(body: dict) -> SamplingParams:
    defaults = SamplingParams()
    fields_ = {name: body[name] for name in ("temperature", "top_p", "top_k", "presence_penalty",
                                              "frequency_penalty", "penalty_decay", "seed")
               if body.get(name) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        fields_["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) for s in stop):
            raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} strings", "stop")
        # the turn terminator always ends an answer, whatever the client adds
        fields_["stop"] = list(dict.fromkeys(stop + defaults.stop))
    try:
        return SamplingParams(**fields_)
    except ValueError as e:
        param = str(e).split(" ", 1)[0]
        raise APIError(400, str(e), param if param in fields_ else None) from None
