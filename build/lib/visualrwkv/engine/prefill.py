"""Prefill planning: a request's prompt resumed from the prefix cache and run into a state in chunks.

The engine thread admits a request (`Prefiller.plan`: the longest cached checkpoint, then the
chunks of the rest), runs its chunks across engine steps (`Prefiller.run_chunk`, storing the state
where a checkpoint ends), and finally joins it to the decode batch. Chunks depend only on the prompt,
so a request computes the same state whatever else the engine is doing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from visualrwkv.constants import IMAGE_TOKEN_INDEX
from visualrwkv.engine.cache import PrefixStateCache, make_prefix_keys
from visualrwkv.engine.handles import RequestHandle
from visualrwkv.engine.inputs import ChatPrompt
from visualrwkv.engine.params import SamplingParams
from visualrwkv.rwkv.model import RWKVState


@dataclass
class PrefixEntry:
    """What the cache holds for a prefix: the state after it and the logits of its last position."""

    state: RWKVState
    logits: Tensor

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.logits.numel() * self.logits.element_size()

    def clone(self) -> "PrefixEntry":
        return PrefixEntry(self.state.clone(), self.logits.clone())


@dataclass
class PendingRequest:
    prompt: ChatPrompt
    params: SamplingParams
    handle: RequestHandle


@dataclass
class PrefillJob:
    """A request whose prompt is being run into a state, chunk by chunk across engine steps."""

    request: PendingRequest
    chunks: collections.deque[tuple[int, int]]  # [start, end) spans of the prompt ids still to run
    keys: dict[int, str]  # prefix length → cache key, for the checkpoints (and the end) of the prompt
    remaining: int  # positions still to run
    cached: int  # positions resumed from the cache
    state: RWKVState | None = None
    logits: Tensor | None = None


class Prefiller:
    """Plans and runs prompt prefills for one model and its prefix cache (engine thread only)."""

    def __init__(self, model, cache: PrefixStateCache, model_id: str, prefill_chunk: int):
        self.model = model
        self.cache = cache
        self.model_id = model_id
        self.prefill_chunk = prefill_chunk

    def cache_id(self) -> str:
        """The model as the cache keys name it: its id, and its merged adapter and initial state if any
        (`VisualRWKV.cache_tag`), so that states from two state files are never mixed up."""
        return self.model_id + getattr(self.model, "cache_tag", "")

    def count_prompt_tokens(self, prompt: ChatPrompt) -> int:
        """Positions the prompt occupies: text tokens plus the image vectors (or the text-only image slot)."""
        return self.prompt_positions(prompt, len(prompt.ids))

    def prompt_positions(self, prompt: ChatPrompt, n_ids: int) -> int:
        """Positions of the first n_ids ids; a text-only prompt begins with the model's text-only slot."""
        if not n_ids:
            return 0
        slot = self.model.text_only_positions if not prompt.images else 0
        return slot + _positions(prompt.ids[:n_ids], self.model.vit.num_tokens)

    def plan(self, request: PendingRequest) -> PrefillJob:
        """Resume the prompt from the longest cached checkpoint and plan the chunks of the rest."""
        prompt = request.prompt
        ids = prompt.ids
        points = [c for c in prompt.checkpoints if 0 < c < len(ids)] + [len(ids)]
        # every key names all the prompt's images, in order: two prompts that share an image (or the
        # same images in another order) never share a state
        keys = dict(zip(points, make_prefix_keys(prompt.digests, ids, points, self.cache_id())))
        job = PrefillJob(request, collections.deque(), keys, 0, 0)
        for b in reversed(points):
            entry = self.cache.get(keys[b])
            if entry is not None:
                job.state, job.logits = entry.state, entry.logits
                job.cached = self.prompt_positions(prompt, b)
                job.chunks.extend(plan_chunks(ids, b, points, self.model.vit.num_tokens, self.prefill_chunk))
                break
        else:
            job.chunks.extend(plan_chunks(ids, 0, points, self.model.vit.num_tokens, self.prefill_chunk))
        job.remaining = self.count_prompt_tokens(prompt) - job.cached
        return job

    def run_chunk(self, job: PrefillJob) -> int:
        """Run the job's next chunk from its state; store the state where a checkpoint ends. Positions run."""
        prompt = job.request.prompt
        start, end = job.chunks.popleft()
        segment = prompt.ids[start:end]
        first = prompt.ids[:start].count(IMAGE_TOKEN_INDEX)  # the images of the earlier chunks
        images = [image.image for image in prompt.images[first:first + segment.count(IMAGE_TOKEN_INDEX)]]
        # only a text-only prompt's first chunk begins with the text-only slot (not the text before an image)
        job.logits, job.state = self.model.prefill(segment, images, job.state,
                                                   continuation=job.state is not None or bool(prompt.images))
        if end in job.keys:
            self.cache.put(job.keys[end], PrefixEntry(job.state, job.logits))
        n = self.prompt_positions(prompt, end) - self.prompt_positions(prompt, start)
        job.remaining -= n
        return n


def _positions(ids: Sequence[int], image_tokens: int) -> int:
    n_images = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
    return len(ids) - n_images + n_images * image_tokens


def plan_chunks(ids: Sequence[int], start: int, checkpoints: Sequence[int], image_tokens: int,
                limit: int) -> list[tuple[int, int]]:
    """[a, b) spans that cover ids[start:], each of at most `limit` positions (text tokens plus image
    vectors), never cutting the image. A span ends right after the image (that state serves any
    question about the image), else at the furthest checkpoint within reach, so that the state
    there can be cached, else wherever the limit falls. (Ending at every checkpoint would cost a
    model call per turn of a long conversation.) The spans depend only on the prompt and `start`,
    so a request computes the same state whatever else the engine is doing."""
    spans, a, n = [], start, len(ids)
    stops = sorted(c for c in checkpoints if start < c <= n)
    while a < n:
        b, size = a, 0
        while b < n:  # grow the span token by token while it fits
            width = image_tokens if ids[b] == IMAGE_TOKEN_INDEX else 1
            if size + width > limit and b > a:
                break
            b, size = b + 1, size + width
            if ids[b - 1] == IMAGE_TOKEN_INDEX and b in stops:
                break
        reachable = [c for c in stops if a < c <= b]
        if b < n and reachable:
            b = reachable[-1]
        spans.append((a, b))
        a = b
    return spans
