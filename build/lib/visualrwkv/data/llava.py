"""LLaVA-format conversation datasets (SPEC §8.4): JSON (a list) or JSONL (one object per line).

A row is `{"id" | "sample_id", "image"?: "rel/path.jpg" | ["a.jpg", ...], "conversations": [...]}`.
Rows are validated when the dataset is built (structure, roles, `<image>` count, image files exist;
optionally a PIL verify of every image); images are decoded in `__getitem__`. A bad row raises a
`DataError` naming the file, the row (JSON index or JSONL line) and the id, or, with
`skip_bad_rows=True`, is dropped and counted per reason in `dataset.skipped`. A sample whose first
ctx_len positions hold no label is always skipped and counted (`no_label_in_ctx_len`).

The prompt format follows the model (`prompt_format`, prompts.py): "v6" lays the image out by
`image_position` and takes one image per row (`max_images`; more is the reason `too_many_images`);
"v7" puts the row's images, in order, at the start of their human turn, any number of them.

What an item holds (the model splices and truncates again after inserting image features, §5.4):
`input_ids` with one IMAGE_TOKEN_INDEX sentinel per image, `labels` masked per §7.6, `images` (one
per sentinel, preprocessed tensors or PIL images), `id`, and `skipped` (see __getitem__).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from visualrwkv.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from visualrwkv.prompts import (
    IMAGE_POSITIONS,
    MULTI_TURN_RENDERINGS,
    check_prompt_format,
    ROLE_NAMES,
    SHORT_ANSWER_PHRASE,
    ConversationError,
    default_tokenizer,
    tokenize_conversation,
    validate_conversations,
)
from visualrwkv.rwkv.tokenizer import Tokenizer

REASONS = (
    "malformed",  # not an object, missing/ill-typed fields, unparsable JSONL line, empty turn, no answer
    "bad_role",  # a turn whose "from" is not human/gpt
    "empty_conversations",  # no turns (or none left after dropping empty-answer rounds)
    "image_count_mismatch",  # number of <image> tags != number of image paths
    "too_many_images",  # more images than the model takes (v6 format: one per sample, SPEC §5.4)
    "missing_image",  # an image file that does not exist
    "corrupt_image",  # an image file that PIL cannot verify or decode
    "no_label_in_ctx_len",  # no supervised token within the first ctx_len positions (always skipped)
)
# Skipped (and counted) even without skip_bad_rows: the row is fine, but ctx_len leaves nothing of it to
# train. The official code trains its last ctx_len positions instead: answers without their image.
ALWAYS_SKIPPED = ("no_label_in_ctx_len",)


class DataError(ValueError):
    """A bad row: `reason` is one of REASONS; the message names the file, row and id."""

    def __init__(self, reason: str, detail: str, location: str = "?", sample_id: str | None = None):
        self.reason, self.detail, self.location, self.sample_id = reason, detail, location, sample_id
        super().__init__(f"{location} (id {sample_id!r}): {reason}: {detail}")

    def __reduce__(self):  # pickle by fields: the default would call __init__ with the message alone
        return DataError, (self.reason, self.detail, self.location, self.sample_id)

    def at(self, location: str, sample_id: str | None) -> "DataError":
        return DataError(self.reason, self.detail, location, sample_id)


@dataclass(frozen=True)
class LlavaRecord:
    """One validated sample. `turns` are (from, value) pairs; `image_paths` are resolved paths."""

    sample_id: str
    location: str  # "file.json[12]" (list index) or "file.jsonl:13" (line number)
    image_paths: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]

    @property
    def conversations(self) -> list[dict[str, str]]:
        return [{"from": who, "value": value} for who, value in self.turns]


def default_load_image(path: str) -> Image.Image:
    """PIL open + verify (catches truncated and corrupt files), then a fresh open decoded to RGB."""
    with Image.open(path) as image:
        image.verify()  # verify leaves the image unusable, hence the second open
    with Image.open(path) as image:
        return image.convert("RGB")


def verify_image_file(path: str) -> None:
    with Image.open(path) as image:
        image.verify()


# ---------------------------------------------------------------- reading and validation


def _is_json_list(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.lstrip().startswith("[")
    return False


def read_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) for every row of a JSON list (sniffed from its first character) or a
    JSONL file (streamed line by line); an unparsable JSONL line yields (location, DataError)."""
    path = Path(path)
    if _is_json_list(path):
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:  # one broken list makes every row unreadable: not skippable
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        for index, row in enumerate(rows):
            yield f"{path}[{index}]", row
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as e:
                row = DataError("malformed", f"not a JSON object ({e.msg})")
            yield f"{path}:{lineno}", row


def _sample_id(row: dict) -> str:
    sample_id = row.get("id", row.get("sample_id"))
    if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)) or sample_id == "":
        raise DataError("malformed", "missing 'id' (or 'sample_id'): a non-empty string or integer is required")
    return str(sample_id)


def _image_paths(row: dict, image_root: Path) -> tuple[str, ...]:
    images = row.get("image")
    if images is None:
        return ()
    names = [images] if isinstance(images, str) else images
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError("malformed", f"'image' must be a relative path or a list of them, got {images!r}")
    return tuple(str(image_root / name) for name in names)


def _turns(row: dict) -> tuple[tuple[str, str], ...]:
    conversations = row.get("conversations")
    if not isinstance(conversations, list):
        raise DataError("malformed", f"'conversations' must be a list of turns, got {type(conversations).__name__}")
    if not conversations:
        raise DataError("empty_conversations", "'conversations' is empty")
    for i, turn in enumerate(conversations):
        if isinstance(turn, dict) and "from" in turn and turn["from"] not in ROLE_NAMES:
            raise DataError("bad_role", f"turn {i}: unknown role {turn['from']!r} (expected 'human' or 'gpt')")
    try:
        validate_conversations(conversations)
    except ConversationError as e:
        raise DataError("malformed", str(e)) from None
    return tuple((turn["from"], turn["value"]) for turn in conversations)


def parse_row(row: Any, image_root: Path) -> LlavaRecord:
    """Validate the structure of one row (location is filled in by the caller)."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError("malformed", f"expected an object, got {type(row).__name__}")
    sample_id = _sample_id(row)
    try:
        image_paths = _image_paths(row, image_root)
        turns = _turns(row)
    except DataError as e:
        raise e.at("?", sample_id) from None
    tags = sum(value.count(DEFAULT_IMAGE_TOKEN) for _, value in turns)
    if tags != len(image_paths):
        detail = f"{tags} {DEFAULT_IMAGE_TOKEN} tag(s) but {len(image_paths)} image(s)"
        raise DataError("image_count_mismatch", detail, sample_id=sample_id)
    return LlavaRecord(sample_id, "?", image_paths, turns)


def check_answers(record: LlavaRecord) -> None:
    """Refuse turns that would train on garbage: an empty value renders "User:"/"Assistant:" with no
    terminator and runs into the next turn; a row without an answer has nothing to learn."""
    for i, (who, value) in enumerate(record.turns):
        if not value.strip():
            hint = " (max_rounds drops empty-answer rounds)" if who == "gpt" else ""
            raise DataError("malformed", f"turn {i}: empty {who} value{hint}")
    if all(who != "gpt" for who, _ in record.turns):
        raise DataError("malformed", "no gpt turn: nothing to supervise")


def split_rounds(record: LlavaRecord, max_rounds: int) -> list[LlavaRecord]:
    """The official reformat (§8.4): drop rounds with an empty answer, then cut into chunks of at most
    `max_rounds` (human, gpt) rounds. Every chunk keeps all the row's images; a chunk whose tags do not
    match them gets all tags moved to the front of its first question, and chunks after the first get
    the short-answer phrase when the row's first question had it. Chunk ids are "<id>#<k>"."""
    turns = record.turns
    expected = [("human", "gpt")[i % 2] for i in range(len(turns))]
    if len(turns) % 2 or [who for who, _ in turns] != expected:
        raise DataError("malformed", "max_rounds needs alternating human/gpt turns starting with human")
    rounds = [(turns[i], turns[i + 1]) for i in range(0, len(turns), 2) if turns[i + 1][1].strip()]
    if not rounds:
        raise DataError("empty_conversations", "every round has an empty answer")
    had_phrase = SHORT_ANSWER_PHRASE in turns[0][1]
    n_images = len(record.image_paths)
    chunks = [rounds[k : k + max_rounds] for k in range(0, len(rounds), max_rounds)]
    out = []
    for k, chunk in enumerate(chunks):
        flat = [list(turn) for pair in chunk for turn in pair]
        if sum(value.count(DEFAULT_IMAGE_TOKEN) for _, value in flat) != n_images:
            for turn in flat:
                turn[1] = turn[1].replace(DEFAULT_IMAGE_TOKEN, "")
            flat[0][1] = f"{DEFAULT_IMAGE_TOKEN}\n" * n_images + flat[0][1]
        if k and had_phrase and SHORT_ANSWER_PHRASE not in flat[0][1]:
            flat[0][1] += "\n" + SHORT_ANSWER_PHRASE
        sample_id = record.sample_id if len(chunks) == 1 else f"{record.sample_id}#{k}"
        out.append(replace(record, sample_id=sample_id, turns=tuple((w, v) for w, v in flat)))
    return out


def truncate_ids(
    input_ids: list[int], labels: list[int], ctx_len: int, tokens_per_image: int = 1, start: int = 0
) -> tuple[list[int], list[int]]:
    """Keep the FIRST positions that fit in ctx_len, counting each sentinel as `tokens_per_image`
    positions (its spliced size) and `start` positions before the first id (the model's text-only
    image slot), so the instruction stays complete. An image never gets cut: one whose span would
    cross ctx_len is dropped with everything after it."""
    used = start
    for k, token in enumerate(input_ids):
        used += tokens_per_image if token == IMAGE_TOKEN_INDEX else 1
        if used > ctx_len:
            return input_ids[:k], labels[:k]
    return input_ids, labels


# ---------------------------------------------------------------- dataset


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA conversations → {input_ids, labels, images, id, skipped}; see the module docstring.

    `data_path`: one file or several (JSON list or JSONL, sniffed from the first character).
    `image_root`: where relative image paths start (default: the directory of each data file).
    `ctx_len`: keep the first ctx_len positions, a sentinel counting `tokens_per_image` (set it to the
    spliced image length, e.g. 577 for CLIP-L/336, for a text budget of ctx_len − 577).
    `text_only_positions`: what the model puts before the text of a sample without an image
    (`VisualRWKV.text_only_positions`: the image slot under the v6.0 layout, else 0).
    `prompt_format` ("v6" or "v7") and `max_images` (None: no limit): the model's (VisualRWKVConfig).
    `multi_turn`: how a conversation of several questions is rendered (prompts.MULTI_TURN_RENDERINGS).
    `load_image(path) -> PIL.Image` and `preprocess(PIL) -> Tensor` are the vision layer's hooks; they
    must be picklable (module-level functions) for DataLoader workers.
    """

    def __init__(
        self,
        data_path: str | Path | Sequence[str | Path],
        image_root: str | Path | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        image_position: str = "middle",
        ctx_len: int | None = None,
        tokens_per_image: int = 1,
        text_only_positions: int = 0,
        max_rounds: int | None = None,
        skip_bad_rows: bool = False,
        verify_images: bool = False,
        prompt_format: str = "v6",
        max_images: int | None = None,
        multi_turn: str = "official",
        load_image: Callable[[str], Image.Image] = default_load_image,
        preprocess: Callable[[Image.Image], Any] | None = None,
    ):
        if ctx_len is not None and ctx_len < 1:
            raise ValueError(f"ctx_len must be a positive integer, got {ctx_len}")
        if tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1, got {tokens_per_image}")
        if image_position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {image_position!r}")
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be None or >= 1, got {max_images}")
        self._tokenizer = tokenizer
        self.image_position = image_position
        self.prompt_format, self.max_images = check_prompt_format(prompt_format), max_images
        if multi_turn not in MULTI_TURN_RENDERINGS:
            raise ValueError(f"multi_turn must be one of {MULTI_TURN_RENDERINGS}, got {multi_turn!r}")
        self.multi_turn = multi_turn
        if text_only_positions < 0:
            raise ValueError(f"text_only_positions must be >= 0, got {text_only_positions}")
        self.ctx_len, self.tokens_per_image, self.max_rounds = ctx_len, tokens_per_image, max_rounds
        self.text_only_positions = text_only_positions
        self.skip_bad_rows, self.verify_images = skip_bad_rows, verify_images
        self.load_image, self.preprocess = load_image, preprocess
        self.skipped: Counter[str] = Counter()  # reason -> rows skipped (build time + this process's reads)
        self.skip_examples: dict[str, list[str]] = {}
        self.rows_read = 0
        self._bad_indices: set[int] = set()
        paths = [data_path] if isinstance(data_path, (str, Path)) else list(data_path)
        self.records: list[LlavaRecord] = []
        for path in paths:
            root = Path(image_root) if image_root is not None else Path(path).parent
            for location, row in read_rows(path):
                self.rows_read += 1
                try:
                    self.records.extend(self._validate(row, location, root))
                except DataError as e:
                    self._skip_or_raise(e)
        if self.skipped:
            warnings.warn(self.skip_report(), stacklevel=2)

    # -- validation

    def _validate(self, row: Any, location: str, root: Path) -> list[LlavaRecord]:
        sample_id = row.get("id", row.get("sample_id")) if isinstance(row, dict) else None
        try:
            record = replace(parse_row(row, root), location=location)
            sample_id = record.sample_id
            if self.max_images is not None and len(record.image_paths) > self.max_images:
                takes = "one image" if self.max_images == 1 else f"at most {self.max_images} images"
                raise DataError("too_many_images", f"{len(record.image_paths)} images, but the model takes {takes} "
                                "per sample")
            for path in record.image_paths:
                if not Path(path).is_file():
                    raise DataError("missing_image", f"image file not found: {path}")
                if self.verify_images:
                    try:
                        verify_image_file(path)
                    except Exception as e:  # PIL raises many types for bad files
                        raise DataError("corrupt_image", f"{path}: {type(e).__name__}: {e}") from None
            chunks = split_rounds(record, self.max_rounds) if self.max_rounds else [record]
            for chunk in chunks:
                check_answers(chunk)
            return chunks
        except DataError as e:
            raise e.at(location, None if sample_id is None else str(sample_id)) from None

    def _skip_or_raise(self, error: DataError) -> None:
        if not (self.skip_bad_rows or error.reason in ALWAYS_SKIPPED):
            raise error
        self.skipped[error.reason] += 1
        examples = self.skip_examples.setdefault(error.reason, [])
        if len(examples) < 3:
            examples.append(str(error))

    def skip_report(self) -> str:
        if not self.skipped:
            return f"{self.rows_read} rows read, none skipped"
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.skipped.items()))
        lines = [f"skipped {sum(self.skipped.values())} of {self.rows_read} rows: {counts}"]
        lines += [f"  e.g. {example}" for examples in self.skip_examples.values() for example in examples]
        return "\n".join(lines)

    # -- items

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else default_tokenizer()

    def __getstate__(self):
        # the Rust tokenizer cannot be pickled; workers rebuild the default one
        state = self.__dict__.copy()
        if isinstance(state["_tokenizer"], Tokenizer):
            state["_tokenizer"] = None
        return state

    def __len__(self) -> int:
        return len(self.records)

    def approx_lengths(self) -> list[int]:
        """A cheap length estimate per sample (about 4 characters a token, spliced images included),
        good enough for length-grouped batching without tokenizing everything up front."""
        per_image = self.tokens_per_image
        return [
            sum(len(value) for _, value in r.turns) // 4 + 4 * len(r.turns)
            + (per_image * len(r.image_paths) or self.text_only_positions)
            for r in self.records
        ]

    def __getitem__(self, index: int) -> dict:
        """With skip_bad_rows, a sample whose image fails to decode is counted, warned about and
        replaced by the next good one (so batches keep their size); the item's `skipped` lists what was
        replaced, and `collate` gathers it, because counts made inside DataLoader workers are lost."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        replaced: list[str] = []
        for attempt in range(len(self)):
            j = (index + attempt) % len(self)
            if j in self._bad_indices:
                continue
            try:
                item = self._build(self.records[j])
            except DataError as e:
                if not (self.skip_bad_rows or e.reason in ALWAYS_SKIPPED):
                    raise
                self._bad_indices.add(j)
                self._skip_or_raise(e)
                replaced.append(str(e))
                warnings.warn(f"skipping bad sample: {e}", stacklevel=2)
                continue
            item["skipped"] = replaced
            return item
        reasons = ", ".join(sorted(self.skipped))
        raise DataError(next(iter(self.skipped), "corrupt_image"), f"no sample could be loaded (skipped: {reasons})",
                        "dataset", None)

    def _build(self, record: LlavaRecord) -> dict:
        try:
            sample = tokenize_conversation(
                record.conversations, self.tokenizer, self.image_position, num_images=len(record.image_paths),
                prompt_format=self.prompt_format, multi_turn=self.multi_turn,
            )
        except ConversationError as e:
            raise DataError("malformed", str(e), record.location, record.sample_id) from None
        input_ids, labels = sample.input_ids, sample.labels
        if self.ctx_len is not None:
            start = 0 if record.image_paths else self.text_only_positions
            input_ids, labels = truncate_ids(input_ids, labels, self.ctx_len, self.tokens_per_image, start)
            if all(y == IGNORE_INDEX for y in labels):
                raise DataError("no_label_in_ctx_len", f"no answer token within the first {self.ctx_len} positions "
                                "(an answer is never trained without its image): raise ctx_len or shorten the sample",
                                record.location, record.sample_id)
        kept = sum(1 for t in input_ids if t == IMAGE_TOKEN_INDEX)  # images cut off by ctx_len are not loaded
        # sentinel i is image i mod n: the "image-every-turn" rendering lays a conversation's n images out
        # again in every later question; each file is read once
        loaded = [self._image(record, path) for path in record.image_paths[:kept]]
        images = [loaded[i % len(loaded)] for i in range(kept)]
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "images": images,
            "id": record.sample_id,
        }

    def _image(self, record: LlavaRecord, path: str):
        where = (record.location, record.sample_id)
        try:
            image = self.load_image(path)
        except FileNotFoundError:
            raise DataError("missing_image", f"image file not found: {path}", *where) from None
        except Exception as e:  # decoders raise many types; all mean this file is unusable
            raise DataError("corrupt_image", f"{path}: {type(e).__name__}: {e}", *where) from None
        if self.preprocess is None:
            return image
        # not caught: a failing preprocess is a bug in the pipeline, not a bad row to skip
        return self.preprocess(image)


def collate(items: list[dict]) -> dict:
    """Right-pad input_ids with 0 and labels with IGNORE_INDEX to the longest sample; images stay a
    list per sample (samples may hold 0, 1 or several)."""
    if not items:
        raise ValueError("collate needs at least one item")
    lengths = [len(item["input_ids"]) for item in items]
    input_ids = torch.zeros(len(items), max(lengths), dtype=torch.long)
    labels = torch.full((len(items), max(lengths)), IGNORE_INDEX, dtype=torch.long)
    for row, (item, n) in enumerate(zip(items, lengths)):
        input_ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "lengths": torch.tensor(lengths, dtype=torch.long),
        "images": [item["images"] for item in items],
        "ids": [item["id"] for item in items],
        "skipped": [message for item in items for message in item.get("skipped", [])],
    }
