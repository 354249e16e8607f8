"""Turning a stream of token ids into a stream of text.

Two stages, usable alone or together (`TextStream`):
- `IncrementalDetokenizer`: tokens may end inside a multi-byte UTF-8 character, so bytes are held
  until they form complete characters; the concatenated deltas always equal
  `tokenizer.decode(all_ids)`.
- `StopStringFilter`: holds back text that could still grow into a stop string and cuts the stream
  at the first stop string (which is not emitted). "First" means the stop occurrence that *ends*
  earliest, because generation halts at the step where a stop string completes; this makes the
  result independent of how the text was split into deltas.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable, Sequence

from visualrwkv.constants import DEFAULT_STOP_TOKEN


class IncrementalDetokenizer:
    """Consumes token ids, emits text deltas made only of complete UTF-8 characters."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        """`token_bytes`: id → bytes of that token, e.g. `Tokenizer().token_bytes`."""
        self._token_bytes = token_bytes
        # the incremental codec buffers incomplete sequences and replaces invalid bytes with U+FFFD
        # exactly as a one-shot bytes.decode("utf-8", "replace") of the whole stream would
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes(token_id))

    def push_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: bytes of an unfinished character become U+FFFD."""
        return self._decoder.decode(b"", final=True)


def _validate_stops(stop: Sequence[str]) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    return list(stop)


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Start index of the stop string occurrence in `text` that ends earliest (ties: the longer
    stop, which starts earlier), or None if there is none."""
    best: tuple[int, int] | None = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or (i + len(s), i) < best):
            best = (i + len(s), i)
    return None if best is None else best[1]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) its first stop string; what a `StopStringFilter` emits in total."""
    i = find_stop(text, _validate_stops(stop))
    return text if i is None else text[:i]


class StopStringFilter:
    """Consumes text deltas, emits the part that can no longer become (part of) a stop string."""

    def __init__(self, stop: Sequence[str]):
        self.stop = _validate_stops(stop)
        self.stopped = False
        self._held = ""

    def _hold_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        text = self._held + delta
        i = find_stop(text, self.stop)
        if i is not None:
            self.stopped = True
            self._held = ""
            return text[:i]
        hold = self._hold_length(text)
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        """End of stream without a stop string: the held-back text is ordinary text after all."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


class TextStream:
    """Token ids in, stop-aware text deltas out; `text` is everything emitted so far."""

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = (DEFAULT_STOP_TOKEN,)):
        self._detok = IncrementalDetokenizer(token_bytes)
        self._filter = StopStringFilter(stop)
        self.text = ""

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared; further tokens produce no text."""
        return self._filter.stopped

    def push(self, token_id: int) -> str:
        delta = self._filter.push(self._detok.push(token_id))
        self.text += delta
        return delta

    def finish(self) -> str:
        delta = self._filter.push(self._detok.flush()) if not self.stopped else ""
        delta += self._filter.flush()
        self.text += delta
        return delta


def final_answer(text: str) -> str:
    """The canonical answer of a generation (SPEC §9.1): split on "\\n\\n", first part, strip()."""
    return text.split(DEFAULT_STOP_TOKEN)[0].strip()


def decode_final_answer(decode: Callable[[list[int]], str], token_ids: Sequence[int]) -> str:
    """`final_answer(decode(ids))`, e.g. `decode_final_answer(tokenizer.decode, ids)`."""
    return final_answer(decode(list(token_ids)))
