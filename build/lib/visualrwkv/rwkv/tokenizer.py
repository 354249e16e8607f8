"""The RWKV World tokenizer (vocabulary rwkv_vocab_v20230424).

Encoding is a greedy longest match over UTF-8 bytes; we use the Rust implementation from
`pyrwkv_tokenizer` (exact ids, ~8x faster than the pure-Python trie). Decoding is done here from the
byte table of the same vocabulary file, because the Rust decoder panics on tokens that end inside a
multi-byte character, which streaming decoders meet all the time.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import pyrwkv_tokenizer

VOCAB_SIZE = 65536  # rows of emb/head; text ids are 1..65529, 0 is end-of-text/pad
END_OF_TEXT = 0
DOUBLE_NEWLINE = 261  # "\n\n", the turn terminator and default stop token


@lru_cache(maxsize=1)
def _token_bytes() -> tuple[bytes, ...]:
    """bytes of every id; ids that are not text (0, 65530..65535) map to b''."""
    path = Path(pyrwkv_tokenizer.__file__).with_name("rwkv_vocab_v20230424.txt")
    table = [b""] * VOCAB_SIZE
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8").rstrip("\r\n")
            idx = int(line[: line.index(" ")])
            literal = line[line.index(" ") : line.rindex(" ")].strip()
            value = ast.literal_eval(literal)  # a str or bytes literal; literal_eval runs no code
            data = value.encode("utf-8") if isinstance(value, str) else value
            if len(data) != int(line[line.rindex(" ") :]):
                raise ValueError(f"vocabulary line {idx}: length mismatch")
            table[idx] = data
    return tuple(table)


class Tokenizer:
    """`encode(str) -> list[int]`, `decode(ids) -> str`; decode(encode(s)) == s for every string."""

    vocab_size = VOCAB_SIZE

    def __init__(self) -> None:
        self._rust = pyrwkv_tokenizer.RWKVTokenizer()
        self._bytes = _token_bytes()

    def __reduce__(self):
        # the Rust encoder cannot be pickled; a Tokenizer has no other state, so rebuild it
        return (Tokenizer, ())

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}")
        return self._rust.encode(text) if text else []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._bytes
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
            out.append(table[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`; bytes that do not form complete UTF-8 characters become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])
