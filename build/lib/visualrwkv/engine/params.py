"""SamplingParams: how one sequence is sampled, validated on construction (the sampler: sampling.py).

Free of torch imports, so that the CLI builds its sampling flags, defaults and all, at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from visualrwkv.rwkv.tokenizer import DOUBLE_NEWLINE, END_OF_TEXT, VOCAB_SIZE

MAX_TEMPERATURE = 10.0
GREEDY_BELOW = 1e-5  # temperatures under this act as 0 (greedy)
MAX_ABS_PENALTY = 2.0  # the OpenAI API range, which the HTTP server exposes these through
MAX_SEED = 2**63 - 1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value, limit: int = 60) -> str:
    """repr for an error message, cut short: a request may send megabytes or a 4000-digit integer."""
    if isinstance(value, int) and abs(value) > 10**limit:  # str() refuses ints of over 4300 digits
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_finite(value) -> bool:
    """math.isfinite, also for integers too large for a float (which it would raise on)."""
    return isinstance(value, int) or math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How one sequence is sampled; validated on construction."""

    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0  # 0 = off
    presence_penalty: float = 0.2  # alpha_presence
    frequency_penalty: float = 0.2  # alpha_frequency
    penalty_decay: float = 0.996  # alpha_decay
    max_tokens: int = 128
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    stop_token_ids: list[int] = field(default_factory=lambda: [END_OF_TEXT, DOUBLE_NEWLINE])
    seed: int | None = None

    def __post_init__(self) -> None:
        def check_range(name: str, low: float, high: float) -> None:
            value = getattr(self, name)
            if not _is_number(value) or not _is_finite(value) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {_show(value)}")

        check_range("temperature", 0.0, MAX_TEMPERATURE)
        check_range("top_p", 0.0, 1.0)
        check_range("presence_penalty", -MAX_ABS_PENALTY, MAX_ABS_PENALTY)
        check_range("frequency_penalty", -MAX_ABS_PENALTY, MAX_ABS_PENALTY)
        check_range("penalty_decay", 0.0, 1.0)
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {_show(self.top_k)}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {_show(self.max_tokens)}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be None or an integer in [0, 2**63 - 1], got {_show(self.seed)}")

        # a lone string is what HTTP clients often send for a single stop string
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is None:
            stop = []
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {_show(self.stop)}")
        self.stop = list(stop)

        ids = [] if self.stop_token_ids is None else self.stop_token_ids
        if not isinstance(ids, (list, tuple)) or not all(
            _is_int(i) and 0 <= i < VOCAB_SIZE for i in ids
        ):
            raise ValueError(
                f"stop_token_ids must be a list of token ids in [0, {VOCAB_SIZE}), got {_show(self.stop_token_ids)}"
            )
        self.stop_token_ids = list(ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW
